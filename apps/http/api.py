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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

from alo.errors import one_line
from apps.http.batcher import Batcher
from apps.http.errors import ApiError
from apps.http.middleware import BodyLimit, Observe
from apps.http.summary import batch_summary
from apps.http.uploads import request_images
from vad.detector import Detector, Prediction
from vad.png import encode_png

MAX_BODY_BYTES = 64 * 1024 * 1024  # one request's whole body
MAX_IMAGES = 64  # images per request
Extension = Callable[[FastAPI, Batcher], None]  # adds routes to the app (the web page)


@dataclass(frozen=True)
class ServeSettings:
    """What the service is allowed to do."""

    data_root: Path | None = None  # the folder JSON paths must stay inside; None: uploads only
    token: str | None = None
    max_body_bytes: int = MAX_BODY_BYTES
    max_images: int = MAX_IMAGES
    version: str = "1.0.0"
    train_id: str | None = None


def create_app(
    detector: Callable[[], Detector],
    settings: ServeSettings,
    batcher: Batcher | None = None,
    extensions: Sequence[Extension] = (),
) -> FastAPI:
    """The API around a detector.

    Args:
        detector: Returns the resident detector (loaded once; called per batch, in the batcher's thread).
        settings: Limits, data folder and token.
        batcher: The batcher to score with (default: a new one around ``detector``).
        extensions: Each adds its routes to the app (the web page, :mod:`apps.server`).

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
            names, images = await request_images(request, settings.max_images, settings.data_root)
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

    for extend in extensions:
        extend(app, batcher)
    app.router.on_shutdown.append(batcher.close)
    observed = Observe(app, settings.token, (requests, latency, errors), ROUTES, PROTECTED)
    return BodyLimit(observed, settings.max_body_bytes)  # type: ignore[return-value]


ROUTES = {"/v1/predict", "/v1/model", "/healthz", "/readyz", "/metrics", "/docs", "/openapi.json"}


PROTECTED = {"/v1/predict", "/v1/model", "/metrics"}
