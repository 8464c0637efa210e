"""The HTTP scoring API (``main.py --mode serve``): FastAPI on uvicorn around the resident ``Detector``.

- ``POST /v1/predict``: images as multipart uploads (field ``files``, one or many), or a JSON body
  ``{"paths": [...]}`` of files inside the server's data folder. Per image the ``output.csv`` columns
  (``ood_score`` and ``in_distribution`` null when the model has no out-of-distribution check);
  ``?heatmap=true`` adds the heatmap picture (PNG, base64), ``?summary=true`` the batch's summary in the
  ``inference_summary`` shape. After the answer, the scored images are kept for the page's Review queue
  (``review/`` beside the plan, within ``control.review_size_mb``: :mod:`apps.http.review`).
- ``GET /v1/model``, ``GET /healthz``, ``GET /readyz``, ``GET /metrics`` (Prometheus text, the drift gauges of
  :mod:`apps.http.drift` included), ``/docs``.

Safe by default: it binds to 127.0.0.1; another address needs a token (environment ``VAD_API_TOKEN``,
sent as ``Authorization: Bearer``), and a token, once set, is required on every ``/v1`` route and on
``/metrics``: the token is a dependency of the ``/v1`` router itself, so no route added to it can go without.
Request bodies are capped (413), uploads are decoded by content, never trusted by name
(415 with the one-line reason), and paths leaving the data folder are refused (403). Errors are one
line in ``{"error": ...}``, never a stack trace.

``/openapi.json`` documents every request body (both content types of ``/v1/predict``), response model,
content type and error status (:mod:`apps.http.schemas`), and the bearer token where the server has one;
``tests/test_openapi_contract.py`` runs schemathesis against the served API to hold it to the wire.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
from fastapi import APIRouter, BackgroundTasks, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp

from alo.errors import one_line
from apps.http.auth import TOKEN_ENV, check_token
from apps.http.batcher import Batcher
from apps.http.drift import DriftCollector, ServedDrift
from apps.http.errors import ApiError
from apps.http.middleware import BodyLimit, Observe
from apps.http.review import keep_scored
from apps.http.schemas import (
    Health,
    InferenceSummary,
    ModelInfo,
    PredictResponse,
    PredictRow,
    Readiness,
    errors,
    json_number,
    predict_body,
)
from apps.http.summary import batch_summary
from apps.http.uploads import request_images
from vad.detector import Detector, Prediction
from vad.png import encode_png
from vad.review.store import ReviewStore

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
    review: ReviewStore | None = None  # keeps what was scored for the page's Review queue; None: nothing kept
    drift: ServedDrift | None = None  # watches what is scored for drift; None: not watched


@dataclass(frozen=True)
class Service:
    """What the routes work with (``app.state.service``): the batcher, the settings and the metrics."""

    batcher: Batcher
    settings: ServeSettings
    registry: CollectorRegistry
    images_scored: Counter


def service(request: Request) -> Service:
    """The app's :class:`Service` (a dependency of every route)."""
    return request.app.state.service


bearer_scheme = HTTPBearer(
    auto_error=False,
    description=f"The server's token ({TOKEN_ENV}); needed where the server has one (always beyond loopback)",
)


def require_token(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)]
) -> None:
    """The token dependency: a router built with it refuses a request without the server's token (401).

    Every route of :data:`v1` has it by construction (the router's own dependency), and so has ``/metrics``;
    through :data:`bearer_scheme` the OpenAPI document names the bearer token on each of them.
    """
    token = service(request).settings.token
    if token is not None:
        check_token(credentials.credentials if credentials is not None else "", token)


ServiceDep = Annotated[Service, Depends(service)]
# a route added here needs the token, and documents it with its 401
v1 = APIRouter(prefix="/v1", dependencies=[Depends(require_token)], responses=errors(401))
ops = APIRouter()  # liveness, readiness and metrics


@v1.post(
    "/predict",
    summary="Score images (multipart uploads 'files', or JSON {'paths': [...]})",
    response_model_exclude_unset=True,  # heatmap_png and summary absent unless asked for; ood_score null stays
    responses=errors(400, 403, 404, 413, 415, 422),
    openapi_extra=predict_body(MAX_IMAGES),
)
async def predict(
    request: Request, state: ServiceDep, background: BackgroundTasks, heatmap: bool = False, summary: bool = False
) -> PredictResponse:
    """Score the request's images; per image the ``output.csv`` columns (and the heatmap, the batch summary).

    The body is multipart/form-data with the images in field ``files`` (one or many), or JSON
    ``{"paths": [...]}`` naming files inside the server's data folder. The scored images are kept for the
    page's Review queue once the answer is sent.
    """
    batcher, settings = state.batcher, state.settings
    batcher.announce()  # a batch being formed waits for this request while it is received and decoded
    try:
        names, contents, images = await request_images(request, settings.max_images, settings.data_root)
    except BaseException:
        batcher.withdraw()
        raise
    found: list[Prediction] = await asyncio.wrap_future(batcher.submit(images, heatmap, announced=True))
    state.images_scored.inc(len(found))
    if settings.review is not None:  # after the answer, off its path
        background.add_task(keep_scored, settings.review, names, contents, found, settings.train_id)
    if settings.drift is not None:
        background.add_task(settings.drift.observe, found)
    rows = [_row(name, prediction, heatmap) for name, prediction in zip(names, found, strict=True)]
    if not summary:
        return PredictResponse(results=rows)
    current = await asyncio.wrap_future(batcher.resolve())
    batch = InferenceSummary(**batch_summary(current, names, found, settings.version))
    return PredictResponse(results=rows, summary=batch)


def _row(name: str, prediction: Prediction, heatmap: bool) -> PredictRow:
    """One image's answer: its result columns (``ood_score`` and ``in_distribution`` null without a check)."""
    row: dict[str, object] = {"image": name, **prediction.result_row(), "ood_score": json_number(prediction.ood_score)}
    if heatmap and prediction.heatmap is not None:  # set only when sent: the field is absent otherwise
        row["heatmap_png"] = base64.b64encode(encode_png(np.asarray(prediction.heatmap))).decode("ascii")
    return PredictRow.model_validate(row)


@v1.get("/model", summary="The resident model")
async def model(state: ServiceDep) -> ModelInfo:
    """The resident model's name, backbone, input size, thresholds, class names, train run and its OOD check."""
    current = await asyncio.wrap_future(state.batcher.resolve())
    spec, calibration = current.spec, current.calibration
    return ModelInfo(
        model_name=spec.model_name,
        backbone=spec.backbone,
        layers=list(spec.layers),
        input_size=list(spec.input_size),
        raw_threshold=calibration.threshold,
        inference_threshold=calibration.inference_threshold,
        ok_name=calibration.ok_name,
        ng_name=calibration.ng_name,
        train_id=state.settings.train_id,
        ood_check=current.has_ood_check,
        ood_action=current.ood_action,
    )


@ops.get("/healthz", summary="The process answers")
async def healthz() -> Health:
    """Liveness: the process answers."""
    return Health(status="ok")


@ops.get(
    "/readyz",
    summary="The model is loaded and scores",
    response_model=Readiness,
    response_model_exclude_none=True,
    responses={503: {"model": Readiness, "description": "The model cannot be loaded (the reason in 'error')"}},
)
async def readyz(state: ServiceDep) -> Response | Readiness:
    """Readiness: the model is loaded (503 with the reason when it cannot be)."""
    try:
        await asyncio.wrap_future(state.batcher.resolve())
    except Exception as exc:
        return JSONResponse({"status": "not ready", "error": one_line(str(exc))}, 503)
    return Readiness(status="ready")


@ops.get(
    "/metrics",
    summary="Prometheus metrics",
    dependencies=[Depends(require_token)],
    response_class=Response,
    responses={
        200: {"description": "Prometheus text format", "content": {"text/plain": {"schema": {"type": "string"}}}},
        **errors(401),
    },
)
async def metrics(state: ServiceDep) -> Response:
    """Request counts and latencies by route, images scored, errors by status, drift (Prometheus text)."""
    return PlainTextResponse(generate_latest(state.registry).decode("utf-8"), media_type=CONTENT_TYPE_LATEST)


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    """An :class:`ApiError` as its status and ``{"error": ...}`` (401 with its ``WWW-Authenticate``)."""
    del request
    status = exc.status if isinstance(exc, ApiError) else 500
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse({"error": str(exc)}, status, headers=headers)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    """Starlette's and FastAPI's own errors (404, 405, a malformed form) in the API's one-line shape."""
    del request
    if not isinstance(exc, HTTPException):
        return JSONResponse({"error": "internal error"}, 500)
    return JSONResponse({"error": one_line(str(exc.detail))}, exc.status_code, headers=exc.headers)


async def _invalid_request(request: Request, exc: Exception) -> JSONResponse:
    """A parameter of the wrong type (422), in one line: ``heatmap: Input should be a valid boolean``."""
    del request
    found = exc.errors() if isinstance(exc, RequestValidationError) else []
    parts = [f"{'.'.join(map(str, error.get('loc', ())[1:])) or 'request'}: {error.get('msg')}" for error in found]
    return JSONResponse({"error": one_line("; ".join(parts) or "invalid request")}, 422)


def _document_no_token(app: FastAPI) -> None:
    """A server without a token asks for none: its ``/openapi.json`` names no bearer token and no 401.

    FastAPI builds the document once and keeps it (``app.openapi_schema``); it is built here, after every route,
    and edited in place.
    """
    document = app.openapi()
    document.get("components", {}).pop("securitySchemes", None)
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            operation.pop("security", None)
            operation.get("responses", {}).pop("401", None)


def create_app(
    detector: Callable[[], Detector],
    settings: ServeSettings,
    batcher: Batcher | None = None,
    extensions: Sequence[Extension] = (),
) -> ASGIApp:
    """The API around a detector: the :data:`v1` and :data:`ops` routers, the metrics and the body limit.

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
    if settings.drift is not None:
        registry.register(DriftCollector(settings.drift.watch))
    batcher = batcher or Batcher(detector)
    app.state.batcher = batcher
    app.state.service = Service(batcher, settings, registry, images_scored)
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.include_router(v1)
    app.include_router(ops)
    # the metrics' route labels: the API's own paths (the page's routes count as "other")
    routes = {str(getattr(route, "path", "")) for router in (v1, ops, app.router) for route in router.routes}
    for extend in extensions:
        extend(app, batcher)
    app.router.on_shutdown.append(batcher.close)
    if settings.token is None:
        _document_no_token(app)
    return BodyLimit(Observe(app, (requests, latency, errors), routes), settings.max_body_bytes)
