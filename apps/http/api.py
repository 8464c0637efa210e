"""The HTTP scoring API (``main.py --mode serve``): FastAPI on uvicorn around the resident ``Detector``.

- ``POST /v1/predict``: images as multipart uploads (field ``files``, one or many), or a JSON body
  ``{"paths": [...]}`` of files inside the server's data folder. Per image the ``output.csv`` columns;
  ``?heatmap=true`` adds the heatmap picture (PNG, base64), ``?summary=true`` the batch's summary in the
  ``inference_summary`` shape.
- ``GET /v1/model``, ``GET /healthz``, ``GET /readyz``, ``GET /metrics`` (Prometheus text), ``/docs``.

Safe by default: it binds to 127.0.0.1; another address needs a token (environment ``VAD_API_TOKEN``,
sent as ``Authorization: Bearer``), and a token, once set, is required on every ``/v1`` route and on
``/metrics``. Request bodies are capped (413), uploads are decoded by content, never trusted by name
(415 with the one-line reason), and paths leaving the data folder are refused (403). Errors are one
line in ``{"error": ...}``, never a stack trace.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import ipaddress
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from alo.errors import AloError, one_line
from alo.summary import build_summary
from apps.http.batcher import Batcher
from vad.batch_summary import summarize
from vad.detector import Detector, Prediction
from vad.images import decode_image
from vad.png import encode_png

if TYPE_CHECKING:
    from alo.plan import Plan
    from apps.web.app import UiContext

logger = logging.getLogger("assets.http")

TOKEN_ENV = "VAD_API_TOKEN"
MAX_BODY_BYTES = 64 * 1024 * 1024  # one request's whole body
MAX_IMAGES = 64  # images per request


@dataclass(frozen=True)
class ServeSettings:
    """What the service is allowed to do."""

    data_root: Path | None = None  # the folder JSON paths must stay inside; None: uploads only
    token: str | None = None
    max_body_bytes: int = MAX_BODY_BYTES
    max_images: int = MAX_IMAGES
    version: str = "1.0.0"
    train_id: str | None = None


class ApiError(Exception):
    """A client error: its HTTP status and one line."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(one_line(message))
        self.status = status


class HttpMiddleware:
    """Plain ASGI middleware: anything but an HTTP request passes through; requests go to :meth:`handle`."""

    app: ASGIApp

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Route one ASGI call.

        Args:
            scope: ASGI scope.
            receive: ASGI receive.
            send: ASGI send.
        """
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await self.handle(scope, receive, send)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle an HTTP request (subclasses)."""
        raise NotImplementedError


class BodyLimit(HttpMiddleware):
    """Refuse request bodies over a size with 413, whether or not they declare their length."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on, counting its body; answer 413 once it is over the limit."""
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await _too_large(self.limit, send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise _BodyTooLargeError
            return message

        try:
            await self.app(scope, limited, send)
        except _BodyTooLargeError:
            await _too_large(self.limit, send)


class Observe(HttpMiddleware):
    """Token check, one-line errors and metrics around the app, as plain ASGI (no per-request task group)."""

    def __init__(self, app: ASGIApp, token: str | None, requests: Counter, latency: Histogram, errors: Counter) -> None:
        self.app = app
        self.token = token
        self.requests = requests
        self.latency = latency
        self.errors = errors

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Check the token of protected routes, run the app, count the request and its latency."""
        started = time.perf_counter()
        route = scope["path"] if scope["path"] in ROUTES else "other"
        status, answered = 500, False

        async def sending(message: Message) -> None:
            nonlocal status, answered
            if message["type"] == "http.response.start":
                status, answered = int(message["status"]), True
            await send(message)

        try:
            if route in PROTECTED and self.token is not None:
                _check_token(Request(scope), self.token)
            await self.app(scope, receive, sending)
        except ApiError as exc:
            await JSONResponse({"error": str(exc)}, exc.status)(scope, receive, sending)
        except Exception as exc:  # one line, never a stack trace
            logger.exception("request failed")
            if not answered:
                error = JSONResponse({"error": f"internal error {one_line(exc.__class__.__name__)}"}, 500)
                await error(scope, receive, sending)
        self.requests.labels(route, str(status)).inc()
        self.latency.labels(route).observe(time.perf_counter() - started)
        if status >= 400:
            self.errors.labels(str(status)).inc()


class _BodyTooLargeError(Exception):
    pass


async def _too_large(limit: int, send: Send) -> None:
    response = JSONResponse(
        {"error": f"request body over {limit // (1024 * 1024)} MB; send fewer or smaller images"}, 413
    )
    await send({"type": "http.response.start", "status": 413, "headers": response.raw_headers})
    await send({"type": "http.response.body", "body": response.body})


def create_app(
    detector: Callable[[], Detector],
    settings: ServeSettings,
    batcher: Batcher | None = None,
    ui: UiContext | None = None,
) -> FastAPI:
    """The API around a detector.

    Args:
        detector: Returns the resident detector (loaded once; called per batch, in the batcher's thread).
        settings: Limits, data folder and token.
        batcher: The batcher to score with (default: a new one around ``detector``).
        ui: The web page's project, plan and folders (None: the API only).

    Returns:
        The ASGI app (body limit included).
    """
    app = FastAPI(title="VAD scoring API", version=settings.version, docs_url="/docs", redoc_url=None)
    registry = CollectorRegistry()
    requests = Counter("vad_requests", "HTTP requests by route and status", ["route", "status"], registry=registry)
    latency = Histogram(
        "vad_request_seconds",
        "Request latency by route",
        ["route"],
        buckets=(0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
        registry=registry,
    )
    images_scored = Counter("vad_images_scored", "Images scored", registry=registry)
    errors = Counter("vad_errors", "Requests that ended in an error, by status", ["status"], registry=registry)
    batcher = batcher or Batcher(detector)
    app.state.batcher = batcher

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        del request
        return JSONResponse({"error": str(exc)}, exc.status)

    @app.post("/v1/predict", summary="Score images (multipart uploads 'files', or JSON {'paths': [...]})")
    async def predict(request: Request, heatmap: bool = False, summary: bool = False) -> dict[str, Any]:
        batcher.announce()  # a batch being formed waits for this request while it is received and decoded
        try:
            names, images = await _request_images(request, settings)
        except BaseException:
            batcher.withdraw()
            raise
        found: list[Prediction] = await asyncio.wrap_future(batcher.submit(images, heatmap, announced=True))
        images_scored.inc(len(found))
        results = []
        for name, prediction in zip(names, found, strict=True):
            row: dict[str, Any] = {"image": name, **prediction.result_row()}
            if heatmap and prediction.heatmap is not None:
                picture = encode_png(np.asarray(prediction.heatmap))
                row["heatmap_png"] = base64.b64encode(picture).decode("ascii")
            results.append(row)
        body: dict[str, Any] = {"results": results}
        if summary:
            current = await asyncio.wrap_future(batcher.resolve())
            body["summary"] = batch_summary(current, names, found, settings.version)
        return body

    @app.get("/v1/model", summary="The resident model")
    async def model() -> dict[str, Any]:
        current = await asyncio.wrap_future(batcher.resolve())
        spec, calibration = current.spec, current.calibration
        return {
            "model_name": spec.model_name,
            "backbone": spec.backbone,
            "layers": list(spec.layers),
            "input_size": list(spec.input_size),
            "raw_threshold": calibration.threshold,
            "inference_threshold": calibration.inference_threshold,
            "ok_name": calibration.ok_name,
            "ng_name": calibration.ng_name,
            "train_id": settings.train_id,
        }

    @app.get("/healthz", summary="The process answers")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="The model is loaded and scores")
    async def readyz() -> Response:
        try:
            await asyncio.wrap_future(batcher.resolve())
        except Exception as exc:
            return JSONResponse({"status": "not ready", "error": one_line(str(exc))}, 503)
        return JSONResponse({"status": "ready"})

    @app.get("/metrics", summary="Prometheus metrics")
    async def metrics() -> Response:
        return PlainTextResponse(generate_latest(registry).decode("utf-8"), media_type=CONTENT_TYPE_LATEST)

    if ui is not None:
        from apps.web.app import add_ui

        add_ui(app, batcher, ui, settings.token, settings.max_images, settings.version)
    app.router.on_shutdown.append(batcher.close)
    observed = Observe(app, settings.token, requests, latency, errors)
    return BodyLimit(observed, settings.max_body_bytes)  # type: ignore[return-value]


ROUTES = {"/v1/predict", "/v1/model", "/healthz", "/readyz", "/metrics", "/docs", "/openapi.json"}
PROTECTED = {"/v1/predict", "/v1/model", "/metrics"}


def bearer(request: Request) -> str:
    """The token of an ``Authorization: Bearer`` header ('' when there is none)."""
    header = request.headers.get("authorization", "")
    return header.removeprefix("Bearer ").strip() if header.startswith("Bearer ") else ""


def token_matches(given: str, token: str) -> bool:
    """Whether a presented token is the server's (constant-time; an empty one never is)."""
    return bool(given) and hmac.compare_digest(given.encode(), token.encode())


def _check_token(request: Request, token: str) -> None:
    if not token_matches(bearer(request), token):
        raise ApiError(401, "missing or wrong token: send 'Authorization: Bearer <token>' (the server's VAD_API_TOKEN)")


async def _request_images(request: Request, settings: ServeSettings) -> tuple[list[str], list]:
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "multipart/form-data":
        form = await request.form(max_files=settings.max_images, max_fields=16)
        uploads = [item for item in form.getlist("files") if hasattr(item, "read")]
        if not uploads:
            raise ApiError(400, "no images: send them as multipart form field 'files'")
        if len(uploads) > settings.max_images:
            raise ApiError(413, f"{len(uploads)} images in one request; send at most {settings.max_images}")
        names = [str(upload.filename or f"upload-{i}") for i, upload in enumerate(uploads)]
        contents = [await upload.read() for upload in uploads]
        return names, await run_in_threadpool(decode_all, names, contents)
    if kind == "application/json":
        try:
            body = await request.json()
        except ValueError:
            raise ApiError(400, 'the body is not JSON; send {"paths": [...]}') from None
        paths = body.get("paths") if isinstance(body, dict) else None
        if not isinstance(paths, list) or not paths or not all(isinstance(p, str) for p in paths):
            raise ApiError(400, 'send {"paths": ["image.png", ...]}: a non-empty list of file paths')
        if len(paths) > settings.max_images:
            raise ApiError(413, f"{len(paths)} images in one request; send at most {settings.max_images}")
        files = [_inside(settings.data_root, path) for path in paths]
        contents = await run_in_threadpool(lambda: [file.read_bytes() for file in files])
        return list(paths), await run_in_threadpool(decode_all, list(paths), contents)
    raise ApiError(415, "send images as multipart/form-data (field 'files') or JSON {\"paths\": [...]}")


def _inside(root: Path | None, path: str) -> Path:
    if root is None:
        raise ApiError(403, "this server has no data folder: upload the images instead (start it with --data-root)")
    base = root.resolve()
    candidate = Path(path)
    resolved = (candidate if candidate.is_absolute() else base / candidate).resolve()
    if not resolved.is_relative_to(base):
        raise ApiError(403, f"{one_line(path)[:120]} is outside the server's data folder; send a path inside it")
    if not resolved.is_file():
        raise ApiError(404, f"{one_line(path)[:120]} does not exist in the server's data folder")
    return resolved


def decode_all(names: list[str], contents: list[bytes]) -> list:
    """Decode uploads as upright RGB images (by content, not by name).

    Args:
        names: The names shown in errors.
        contents: The files' bytes.

    Returns:
        The images.

    Raises:
        ApiError: 415 with the one-line reason for the first file that is not a readable image.
    """
    images = []
    for name, data in zip(names, contents, strict=True):
        try:
            images.append(decode_image(data, name))
        except AloError as exc:
            raise ApiError(415, str(exc)) from None
    return images


def batch_summary(detector: Detector, names: list[str], found: list[Prediction], version: str) -> dict[str, Any]:
    """The ``inference_summary`` of a batch of predictions.

    Args:
        detector: The detector that scored them (its calibration names the classes).
        names: The images' names.
        found: Their predictions.
        version: The solution version.

    Returns:
        The summary.
    """
    import pandas as pd

    table = pd.DataFrame(
        {
            "anomaly_score": [p.anomaly_score for p in found],
            "certainty": [p.certainty for p in found],
            "pred_label": [p.label for p in found],
        }
    )
    flags = np.array([p.is_anomalous for p in found])
    calibration = detector.calibration
    result, score, probability = summarize(table, flags, calibration.ok_name, calibration.ng_name)
    note = (
        f"{detector.model_name}: {len(found)} image(s), {int(flags.sum())} {calibration.ng_name} "
        f"at threshold {calibration.inference_threshold}"
    )
    file_path = names[0] if len(names) == 1 else f"{len(names)} uploaded images"
    return build_summary(
        result=result, score=score, probability=probability, note=note, file_path=file_path, version=version
    )


def check_bind(host: str, token: str | None) -> None:
    """Refuse to listen beyond the loopback interface without a token.

    Args:
        host: The address to bind.
        token: The token, if set.

    Raises:
        AloError: A non-loopback address without a token.
    """
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        loopback = False
    if not loopback and not token:
        msg = f"plan error: serving on {host} needs a token: set {TOKEN_ENV} (clients send 'Authorization: Bearer')"
        raise AloError(msg)


def token_from_env() -> str | None:
    """The API token from the environment (None when unset or empty)."""
    return os.environ.get(TOKEN_ENV) or None


def serve(
    plan_path: str | Path,
    host: str = "127.0.0.1",
    port: int = 8080,
    data_root: str | None = None,
    max_upload_mb: float = MAX_BODY_BYTES / (1024 * 1024),
) -> None:
    """Load the plan's model once and serve the API until interrupted.

    Args:
        plan_path: The plan (its model: ``load_model_path`` or ``train_artifacts/models``; its inference step's
            ``accelerator`` and ``inference_threshold``; its inference data folder as the default data folder).
        host: Address to bind (loopback unless a token is set).
        port: Port.
        data_root: The folder JSON paths must stay inside (default: the plan's inference data folder).
        max_upload_mb: The largest request body.
    """
    import tempfile

    import uvicorn

    from alo.plan import load_plan
    from alo.runner import model_dir_of, train_id_of
    from apps.web.app import UiContext
    from vad.detector import resident_detector

    token = token_from_env()
    check_bind(host, token)
    plan = load_plan(plan_path)
    args = {step.name: step.args for step in plan.pipelines.get("inference", [])}.get("inference", {})
    with tempfile.TemporaryDirectory(prefix="vad-serve-") as workdir:
        models = model_dir_of(plan, Path(workdir))
        accelerator = str(args.get("accelerator", "cpu"))
        threshold = args.get("inference_threshold")

        def current() -> Detector:
            threshold_value = None if threshold is None else float(threshold)
            return resident_detector(models, accelerator, threshold_value, str(args.get("runtime", "auto")))

        batcher = Batcher(current)
        batcher.resolve().result()  # load before listening, in the thread that scores: /readyz is true at once
        folder = Path(data_root) if data_root else plan.resolve(plan.external_path.load_inference_data_path)
        root = folder if folder is not None and folder.is_dir() else None
        settings = ServeSettings(
            data_root=root,
            token=token,
            max_body_bytes=int(max_upload_mb * 1024 * 1024),
            version=plan.version,
            train_id=train_id_of(models),
        )
        ui = UiContext(plan.root, plan.path, models, Path(data_root) if data_root else _page_data_root(plan))
        logger.info(f"serving {models} on http://{host}:{port} (data folder: {root or 'none, uploads only'})")
        logger.info(f"the page: http://{host}:{port}/ui/inspect (its data folder: {ui.data_root or 'none'})")
        uvicorn.run(create_app(current, settings, batcher, ui), host=host, port=port, log_level="warning")


def _page_data_root(plan: Plan) -> Path | None:
    """The page's data folder by default: the folder holding both the plan's train and inference data."""
    folders = [
        plan.resolve(plan.external_path.load_train_data_path),
        plan.resolve(plan.external_path.load_inference_data_path),
    ]
    found = [str(folder) for folder in folders if folder is not None and folder.is_dir()]
    return Path(os.path.commonpath(found)) if found else None
