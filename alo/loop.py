"""The resident inference loop (``main.py --mode inference --loop``): ALO's edge protocol over Redis.

Boot: the plan (with ``--system`` solution metadata applied) and its model are loaded once, the inference
pipeline runs once on the plan's data as a warm-up, and ``alo_status`` goes ``booting`` -> ``waiting``.

Each request is a JSON message ``{"solution_metadata": {...}, "request_id": "..."}`` (``request_id``
optional) on the Redis list ``request_inference``. It is moved atomically (``BLMOVE``) to the processing
list ``request_inference:processing`` and run through the same inference pipeline as a batch run (staging,
promotion, history, summary) with the resident model. As in ALO, it is answered on ``inference_summary`` as
soon as every step has succeeded (the verdict does not wait for the heatmap files, the promotion or the
archive), on ``inference_artifacts`` once the archive is written, and only then removed from the processing
list. A loop that
starts finds what a crashed one left there and serves it first: every request is answered at least once,
and a repeated answer carries the same ``request_id``. One loop serves one Redis database.

A failed request answers ``{"status": "fail", "message": <one line>, "error_code": ...}`` on both lists,
publishes ALO's ``{"ERROR_CODE", "ERROR_NAME", "COMMENT"}`` on ``alo_fail`` (ALO's codes: E111 an unreadable
request or metadata, E112 metadata that cannot be applied to the plan, E141 data that cannot be loaded, E152
any other failure while the pipeline runs, E161 no summary written); a failure after the summary was answered
(writing or promoting the artifacts) is answered on ``inference_artifacts`` only, with E162. The loop goes on.
Redis going away is waited out with a capped
backoff, logged once.
SIGTERM / SIGINT finish the request in flight, then the loop returns.

At line rate (docs/edge.md): the session is one MLflow run (:mod:`alo.tracking.session`), opened at boot, with
the figures of :mod:`alo.loop_metrics` logged every ``loop_metrics_every`` requests, never a run per request;
``history/inference`` keeps the ``loop_history_keep`` newest request runs; heatmap pictures are scored, drawn
and written by one background thread after promotion (:mod:`alo.background`), never on a request's path. The
solution's optional score watch (:mod:`alo.score_watch`: drift) judges each answered request's scores; an alert is
published once on ``alo_drift`` and logged as a WARNING.
"""

from __future__ import annotations

import importlib
import json
import logging
import signal
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from alo.artifacts import TRASH, project_lock
from alo.background import BackgroundFiles
from alo.errors import AloError, DataError, PlanError, one_line
from alo.logs import FRAMEWORK_LOGGER
from alo.loop_metrics import RequestRows, SessionMetrics, read_rows
from alo.plan import Plan, load_plan
from alo.runner import PreparedStep, ResidentRun, model_dir_of, prepare, run_pipeline, train_id_of
from alo.score_watch import ScoreWatch
from alo.solution_metadata import SolutionMetadata, parse_metadata
from alo.summary import read_summary
from alo.tracking import settings_of
from alo.tracking.session import TrackingSession

logger = logging.getLogger(f"{FRAMEWORK_LOGGER}.loop")

REQUESTS = "request_inference"
PROCESSING = "request_inference:processing"
SUMMARY = "inference_summary"
ARTIFACTS = "inference_artifacts"
STATUS = "alo_status"
FAIL = "alo_fail"
DRIFT = "alo_drift"
WAIT_SECONDS = 1  # BLMOVE timeout (whole seconds): how often the loop looks at its stop flag
BACKOFF = (0.1, 5.0)  # first and longest wait between attempts to reach Redis
SUMMARY_FILE = Path("score") / "inference_summary.yaml"
ARCHIVE = "inference_artifacts.tar.gz"
PREPARED_KEPT = 16  # validated step lists kept, one per distinct set of step arguments seen in requests
OUTPUT_TABLE = Path("output") / "output.csv"
CLOSE_WAIT_S = 30.0  # most seconds the pictures still queued, then the session's run, are waited for at the end

T = TypeVar("T")

# ALO's edge error table (src/alo.py, src/pipeline.py of mellerikat/ALO v2): code -> (name, comment).
ERRORS = {
    "E111": ("SolutionMetadataReadError", "Failed to read Solution Metadata"),
    "E112": ("SolutionMetadataOverwriteError", "Failed to overwrite Solution Metadata into Experimental Plan"),
    "E141": ("PipelineDataLoadError", "Failed to load data from external path"),
    "E152": ("AssetRunMethodFailure", "Failed to run asset"),
    "E161": ("InferenceSummaryCreationFailure", "Failed to create inference summary"),
    "E162": ("InferenceArtifactsCreationFailure", "Failed to create inference artifacts"),
}


@dataclass
class Request:
    """One request being served: its message, its id, and its summary answer once sent."""

    raw: str
    request_id: str
    answer: str | None = None
    answered_s: float | None = None
    rows: RequestRows | None = None


class RequestError(Exception):
    """A request's failure with the ALO code of the phase it failed in."""

    def __init__(self, code: str, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.code = code
        self.cause = cause


def error_code(exc: BaseException) -> str:
    """The ALO code of a failure while the pipeline runs (metadata failures are coded where they happen).

    Args:
        exc: The exception.

    Returns:
        ``E141`` for data the pipeline cannot load, else ``E152`` (an asset failed: model, lock, a bug).
    """
    return "E141" if isinstance(exc, DataError) else "E152"


def _text(value: bytes | str) -> str:
    """A value read from Redis as text (the client decodes responses; redis-py types them as bytes or str)."""
    return value if isinstance(value, str) else value.decode()


class EdgeLoop:
    """One resident inference pipeline serving requests from Redis."""

    def __init__(
        self, plan_path: str | Path, system: str | None = None, package: str = "assets", reporter: str | None = None
    ) -> None:
        """Read the plan and the solution metadata; nothing runs yet.

        Args:
            plan_path: The plan file.
            system: Solution metadata (a YAML/JSON file or a JSON text), or None.
            package: The solution package.
            reporter: The tracking plugin (see :func:`alo.runner.run_pipeline`).
        """
        import redis  # the loop's dependency only
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        self.package = package
        self.reporter = reporter
        self.metadata = parse_metadata(system) if system else SolutionMetadata()
        self.plan: Plan = self.metadata.apply(load_plan(plan_path))
        host, port = self.metadata.redis_host_port
        self.address = f"{host}:{port}"
        self.redis = redis.Redis(
            host=host,
            port=port,
            db=self.metadata.edgeapp_interface.redis_db_number,
            decode_responses=True,
            socket_connect_timeout=2.0,
            socket_timeout=WAIT_SECONDS + 5.0,
            retry=Retry(NoBackoff(), 0),  # the loop retries itself (_redis): with backoff, logged once
        )
        self.redis_errors: tuple[type[BaseException], ...] = (redis.ConnectionError, redis.TimeoutError)
        self.stopping = False
        self._workdir = tempfile.TemporaryDirectory(prefix="alo-loop-")
        self._models: dict[tuple, Path] = {}
        self._steps: dict[str, list[PreparedStep]] = {}
        self.served = 0
        self.background = BackgroundFiles()
        self.metrics = SessionMetrics(self.plan.control.loop_metrics_every)
        self.metrics.sources.append(self._picture_figures)
        self.watch = self._score_watch()
        if self.watch is not None:
            self.metrics.sources.append(self.watch.figures)
        self.models_in_use: Path | None = None  # the models folder of the last request run
        self.session: TrackingSession | None = None
        self._ng_name: str | None = None

    # ------------------------------------------------------------------ Redis, with reconnection

    def _redis(self, call: Callable[[], T], what: str) -> T | None:
        """Run a Redis call until it succeeds (None if the loop is asked to stop while Redis is away)."""
        delay, reported = BACKOFF[0], False
        while True:
            try:
                result = call()
            except self.redis_errors as exc:
                if not reported:
                    logger.warning(f"Redis at {self.address} unreachable ({what}: {one_line(str(exc))}); retrying")
                    reported = True
                if self.stopping:  # an unanswered request stays in the processing list: served after a restart
                    return None
                time.sleep(delay)
                delay = min(delay * 2, BACKOFF[1])
                continue
            if reported:
                logger.info(f"Redis at {self.address} reachable again")
            return result

    def _status(self, value: str) -> None:
        self._redis(lambda: self.redis.publish(STATUS, value), "publish status")

    # ------------------------------------------------------------------ boot and serve

    def boot(self) -> None:
        """Load the model, run the pipeline once on the plan's data (warm-up), and say ``waiting``."""
        self._status("booting")
        steps = prepare(self.plan, "inference", self.package)
        models = self._models_for(self.plan)
        started = time.perf_counter()
        try:
            with project_lock(self.plan.root):
                resident = self._resident(self.plan)
                run_pipeline(self.plan, "inference", steps, self.package, resident_model=models, resident=resident)
            logger.info(f"warm-up run on the plan's data done in {time.perf_counter() - started:.1f}s")
        except DataError as exc:  # no data at boot is normal on an edge device: the model alone is loaded
            logger.warning(f"warm-up skipped: {exc}")
            preload = getattr(importlib.import_module(self.package), "preload", None)
            if preload is not None:
                inference = {step.name: step.args for step in self.plan.pipelines["inference"]}
                preload(models, inference.get("inference", {}))
        self._open_session(steps, models)
        trash = self.plan.root / ".alo" / TRASH
        for left in sorted(trash.iterdir()) if trash.is_dir() else []:  # pruned by a loop that stopped before
            self.background.remove(left)
        self._status("waiting")

    def _resident(self, plan: Plan) -> ResidentRun:
        """How a request's run differs from a batch run: not a tracked run of its own, history capped by count."""
        return ResidentRun(tracked=False, history_keep=plan.control.loop_history_keep, background=self.background)

    def _open_session(self, steps: list[PreparedStep], models: Path) -> None:
        """Open the session's one MLflow run (tracking on); a failure is one WARNING and the loop serves untracked."""
        settings = settings_of(self.plan)
        if not settings.enabled:
            return
        params = {step.name: step.args.model_dump(mode="json") for step in steps}
        train_id = train_id_of(models)
        try:
            self.session = TrackingSession(settings, "loop", params, {"train_id": train_id} if train_id else {})
        except Exception as exc:
            logger.warning(f"session not tracked ({one_line(f'{exc.__class__.__name__}: {exc}')[:200]})")

    def _score_watch(self) -> ScoreWatch | None:
        """The solution's score watch (its optional ``score_watch(plan)`` hook), or None."""
        hook = getattr(importlib.import_module(self.package), "score_watch", None)
        return hook(self.plan) if hook is not None else None

    def _watch_scores(self, rows: RequestRows | None) -> None:
        """Hand a request's scored images to the watch; publish and log each alert it raises."""
        if self.watch is None or rows is None or self.models_in_use is None:
            return
        try:
            alerts = self.watch.observe(self.models_in_use, rows.measures())
        except Exception as exc:  # a statistic never stops the line
            logger.warning(f"scores not watched for drift ({one_line(f'{exc.__class__.__name__}: {exc}')[:200]})")
            return
        for alert in alerts:
            text = alert.text
            logger.warning(f"{DRIFT} {text}")
            self._redis(partial(self.redis.publish, DRIFT, text), "publish the drift alert")

    def _picture_figures(self) -> dict[str, float]:
        """The background pictures' counts, logged with the session's figures."""
        files = self.background
        return {"pictures_written": files.written, "pictures_dropped": files.dropped, "pictures_failed": files.failed}

    def _log_metrics(self, force: bool = False) -> None:
        """Log the session's figures when a step is due (``force``: whatever was counted since the last)."""
        if self.session is None or not (self.metrics.due() or (force and self.metrics.pending)):
            return
        step, figures = self.metrics.take()
        self.session.log(figures, step)

    def serve(self, max_requests: int | None = None) -> int:
        """Serve requests until stopped (SIGTERM, SIGINT) or ``max_requests`` are answered.

        Args:
            max_requests: Stop after this many answers (tests, benchmarks); None: until stopped.

        Returns:
            The number of requests answered.
        """
        previous = {sig: signal.signal(sig, self._stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            left = self._redis(lambda: self.redis.lrange(PROCESSING, 0, -1), "read unfinished requests") or []
            if left:
                logger.info(f"{len(left)} request(s) left unanswered by an earlier loop: serving them first")
            for raw in left:
                self.handle(_text(raw))
            while not self.stopping and (max_requests is None or self.served < max_requests):
                moved = self._redis(
                    lambda: self.redis.blmove(REQUESTS, PROCESSING, WAIT_SECONDS, "LEFT", "RIGHT"),
                    "wait for a request",
                )
                if moved is not None:
                    self.handle(self._stamp(_text(moved)))
                else:
                    self._log_metrics()  # a quiet line: the last figures go out within SECONDS
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        logger.info(f"loop stopped after {self.served} request(s)")
        return self.served

    def _stop(self, signum: int, frame: object) -> None:
        del frame
        if not self.stopping:
            logger.info(f"signal {signal.Signals(signum).name}: finishing the request in flight, then stopping")
        self.stopping = True

    def _stamp(self, raw: str) -> str:
        """Give a request without ``request_id`` one, in the processing list too (a re-served request keeps it)."""
        try:
            message = json.loads(raw)
        except ValueError:
            return raw
        if not isinstance(message, dict) or message.get("request_id"):
            return raw
        stamped = json.dumps({**message, "request_id": uuid.uuid4().hex})
        # The loop is the only consumer: the request it just moved is the processing list's last element.
        self._redis(lambda: self.redis.lset(PROCESSING, -1, stamped), "stamp the request id")
        return stamped

    # ------------------------------------------------------------------ one request

    def handle(self, raw: str) -> None:
        """Run one request and answer it; never raises for what the request holds.

        As in ALO, the summary is answered on ``inference_summary`` as soon as every step has succeeded, before
        the deferred artifact writes, the promotion and the archive; ``inference_artifacts`` is answered once
        those are done. A failure after the summary was answered is answered on ``inference_artifacts`` only
        (ALO's E162). The request leaves the processing list only after its last answer.

        Args:
            raw: The message as taken from Redis.
        """
        started = time.perf_counter()
        request = Request(raw, uuid.uuid4().hex)
        self._status("run")
        try:
            try:
                message = json.loads(raw)
            except json.JSONDecodeError as exc:
                msg = f"plan error: a request is not JSON ({exc.msg}); send a JSON map"
                raise RequestError("E111", PlanError(msg)) from None
            if not isinstance(message, dict) or not isinstance(message.get("solution_metadata"), dict | str):
                msg = 'plan error: a request must be a JSON map {"solution_metadata": {...}}; fix the message'
                raise RequestError("E111", PlanError(msg))
            request.request_id = str(message.get("request_id") or request.request_id)
            try:
                metadata = parse_metadata(message["solution_metadata"])
            except PlanError as exc:
                raise RequestError("E111", exc) from None
            archive = self.run_request(metadata, lambda staging: self._answer_summary(request, staging, started))
            if archive is not None and (answer := request.answer) is not None:
                self._redis(lambda: self.redis.rpush(ARTIFACTS, answer), "answer")
            status = "success"
        except Exception as exc:
            cause, code = (exc.cause, exc.code) if isinstance(exc, RequestError) else (exc, error_code(exc))
            if request.answer is not None:  # the summary went out: only the artifacts failed
                code = "E162"
            text = json.dumps(self._fail(cause, request.request_id, code), default=str)
            if request.answer is None:
                self._redis(lambda: self.redis.rpush(SUMMARY, text), "answer")
            self._redis(lambda: self.redis.rpush(ARTIFACTS, text), "answer")
            status = "fail"
        self._redis(lambda: self.redis.lrem(PROCESSING, 1, raw), "remove the answered request")
        self.served += 1
        self._status("waiting")
        elapsed = time.perf_counter() - started
        self.metrics.add(request.answered_s or elapsed, request.rows, failed=status == "fail")
        self._watch_scores(request.rows)
        self._log_metrics()
        logger.info(f"request {request.request_id}: {status} in {elapsed:.3f}s")

    def _answer_summary(self, request: Request, staging: Path, started: float) -> None:
        """Answer a request with its run's summary (every step has succeeded; the artifacts are not final yet)."""
        path = staging / SUMMARY_FILE
        if not path.is_file():
            msg = f"the inference pipeline wrote no {SUMMARY_FILE.as_posix()}; its last step must write the summary"
            raise RequestError("E161", RuntimeError(msg))
        summary = read_summary(path)
        answer = {"status": "success", "message": summary, "request_id": request.request_id}
        text = request.answer = json.dumps(answer, default=str)
        self._redis(lambda: self.redis.rpush(SUMMARY, text), "answer")
        request.answered_s = time.perf_counter() - started
        try:
            request.rows, self._ng_name = read_rows(staging / OUTPUT_TABLE, summary, self._ng_name)
        except (OSError, ValueError) as exc:  # the figures miss one request; the request is fine
            logger.debug(f"no figures for request {request.request_id}: {exc}")

    def _fail(self, exc: BaseException, request_id: str, code: str) -> dict[str, Any]:
        if isinstance(exc, AloError):
            line = str(exc)
        else:
            line = f"internal error {one_line(f'{exc.__class__.__name__}: {exc}')}"
            logger.debug("request failed", exc_info=exc)
        logger.error(f"request {request_id} failed ({code}): {line}")
        name, comment = ERRORS[code]
        payload = json.dumps({"ERROR_CODE": code, "ERROR_NAME": name, "COMMENT": f"{comment}: {line}"})
        self._redis(lambda: self.redis.publish(FAIL, payload), "publish the error code")
        return {"status": "fail", "message": line, "error_code": code, "request_id": request_id}

    def run_request(self, metadata: SolutionMetadata, answer: Callable[[Path], None] | None = None) -> Path | None:
        """Run the inference pipeline as a request's metadata sets it, with the resident model.

        Args:
            metadata: The request's solution metadata.
            answer: Called with the staging folder once every step has succeeded (see :func:`run_pipeline`).

        Returns:
            The artifacts archive when one was written, else None.
        """
        try:
            plan = metadata.apply(self.plan)
            steps = self._prepared(plan)
        except PlanError as exc:
            raise RequestError("E112", exc) from None
        models = self.models_in_use = self._models_for(plan)
        with project_lock(plan.root):
            run_pipeline(
                plan,
                "inference",
                steps,
                self.package,
                resident_model=models,
                answer=answer,
                resident=self._resident(plan),
            )
        destination = plan.resolve(plan.external_path.save_inference_artifacts_path)
        archive = destination / ARCHIVE if destination is not None else None
        return archive if archive is not None and archive.is_file() else None

    def _prepared(self, plan: Plan) -> list[PreparedStep]:
        """The inference steps of a plan, validated once per distinct set of step arguments."""
        key = json.dumps([(s.name, s.where, s.args) for s in plan.pipelines.get("inference", [])], default=str)
        if key not in self._steps:
            if len(self._steps) >= PREPARED_KEPT:
                self._steps.pop(next(iter(self._steps)))
            self._steps[key] = prepare(plan, "inference", self.package)
        return self._steps[key]

    def _models_for(self, plan: Plan) -> Path:
        """The plan's model folder, found (and an archive extracted) once per model file."""
        source = plan.resolve(plan.external_path.load_model_path)
        if source is None:  # train_artifacts/models: looked up each time (a new training replaces it)
            return model_dir_of(plan, Path(self._workdir.name))
        stat = source.stat() if source.exists() else None
        key = (str(source), stat.st_mtime_ns if stat else None, stat.st_size if stat else None)
        if key not in self._models:
            workdir = Path(self._workdir.name) / f"model-{len(self._models)}"
            self._models[key] = model_dir_of(plan, workdir)
            logger.info(f"model loaded from {source}")
        return self._models[key]

    def close(self) -> None:
        """Write the pictures still queued, log the last figures and end the session's run, then let go of all."""
        self.background.close(CLOSE_WAIT_S)
        if self.session is not None:
            self._log_metrics(force=True)
            if not self.session.close(timeout=CLOSE_WAIT_S):
                logger.warning(f"the session's MLflow run was not ended in {CLOSE_WAIT_S:.0f}s; it is ended at exit")
        self.redis.close()
        self._workdir.cleanup()


def run_loop(
    plan_path: str | Path, system: str | None = None, package: str = "assets", reporter: str | None = None
) -> int:
    """Boot the loop and serve until stopped.

    Args:
        plan_path: The plan file.
        system: Solution metadata, or None.
        package: The solution package.
        reporter: The tracking plugin (see :func:`alo.runner.run_pipeline`).

    Returns:
        The number of requests answered.
    """
    loop = EdgeLoop(plan_path, system, package, reporter)
    try:
        loop.boot()
        return loop.serve()
    finally:
        loop.close()
