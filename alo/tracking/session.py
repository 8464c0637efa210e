"""A resident process's session as one MLflow run: opened at boot, metrics at steps while it serves, closed at its end.

The edge loop does not log a run per request (a line scoring a million parts a day would write a million runs):
it opens one run when it boots, logs its figures over time (:mod:`alo.loop_metrics`) at steps, the requests
served so far, and ends the run when it stops. Every MLflow call runs in the resident logging thread
(:mod:`alo.tracking.resident`), never on a request's path; a failure is one WARNING and the loop goes on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

from alo.tracking.resident import resident_logger
from alo.tracking.settings import TrackingSettings
from alo.tracking.spool import check_store
from alo.tracking.store import cached_store
from alo.tracking.writer import flatten

logger = logging.getLogger("alo.tracking")

CLOSE_WAIT_S = 30.0
SESSION_TAG = "alo.session"


def _now_ms() -> int:
    return int(time.time() * 1000)


class TrackingSession:
    """One resident session's MLflow run (see the module)."""

    def __init__(
        self, settings: TrackingSettings, kind: str, params: Mapping[str, Any], tags: Mapping[str, str]
    ) -> None:
        """Have the run opened in the logging thread.

        Args:
            settings: The plan's tracking settings (enabled).
            kind: What the session is (``loop``): the ``alo.session`` tag and the run's name.
            params: The session's parameters (the steps' arguments), nested.
            tags: More tags (the model's train id, the code id).

        Raises:
            OSError: The local jobs folder cannot be written (the caller warns and goes on untracked).
        """
        check_store(settings)
        self.settings = settings
        self.run_id: str | None = None
        self._thread = resident_logger(settings)
        start = _now_ms()
        name = f"{kind} session {time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(start / 1000))}"
        all_tags = {"mlflow.runName": name, SESSION_TAG: kind, "pipeline": "inference", **tags}
        self._thread.call(lambda: self._open(start, all_tags, dict(params)))

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        """Have metrics logged at a step.

        Args:
            metrics: Name -> value.
            step: The step (the requests served so far).
        """
        stamp, values = _now_ms(), dict(metrics)
        self._thread.call(lambda: self._log(values, step, stamp))

    def close(self, failed: bool = False, timeout: float = CLOSE_WAIT_S) -> bool:
        """End the run, and wait for the thread to have logged everything queued.

        Args:
            failed: The session ended on an error (the run is FAILED, else FINISHED).
            timeout: Most seconds to wait.

        Returns:
            False when the thread had not finished after ``timeout`` (it goes on while the process lives).
        """
        stamp = _now_ms()
        self._thread.call(lambda: self._end("FAILED" if failed else "FINISHED", stamp))
        return self._thread.flush(timeout)

    def _open(self, start: int, tags: dict[str, str], params: dict[str, Any]) -> None:
        _, client, experiment_id = cached_store(self.settings)
        run = client.create_run(experiment_id, start_time=start, tags=tags)
        self.run_id = run.info.run_id
        from mlflow.entities import Param

        flat = [Param(key, value) for key, value in flatten(params).items()]
        for chunk in range(0, len(flat), 100):
            client.log_batch(self.run_id, params=flat[chunk : chunk + 100])

    def _log(self, metrics: dict[str, float], step: int, stamp: int) -> None:
        if self.run_id is None:  # the run could not be opened (one WARNING said why)
            return
        from mlflow.entities import Metric

        _, client, _ = cached_store(self.settings)
        client.log_batch(self.run_id, metrics=[Metric(k, float(v), stamp, step) for k, v in metrics.items()])

    def _end(self, status: str, stamp: int) -> None:
        if self.run_id is None:
            return
        _, client, _ = cached_store(self.settings)
        client.set_terminated(self.run_id, status, stamp)
