"""The quality engineer's web page, on the scoring service (same process, same resident detector).

Pages (server-rendered, one script and one style sheet served by the app: no CDN, no build step):
``/ui/inspect`` (score uploads or a server folder), ``/ui/runs`` and ``/ui/runs/{pipeline}/{id}``,
``/ui/threshold/{id}`` (the validation sweep; "use this threshold" writes a plan copy), ``/ui/train``.

Safe by default: where the service has a token, every page and ``/ui/api`` route needs it (``Authorization:
Bearer`` or the cookie ``/ui/login`` sets, HttpOnly and SameSite=Strict). Every POST needs the page's
per-process CSRF value in ``X-VAD-CSRF`` (a header no other site's page can send here) and, when the browser
sends one, an ``Origin`` of this server. Pages carry a Content-Security-Policy without inline script, and
show file names and CSV text as text only. Files are served by run and id or picture key, never by a path
the request names outside the run folder or the data folder.
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.concurrency import run_in_threadpool

from alo.runner import train_id_of
from apps.http.auth import bearer, token_matches
from apps.http.batcher import Batcher
from apps.http.errors import ApiError
from apps.http.summary import batch_summary
from apps.http.uploads import decode_all
from apps.web import explorer, runs
from apps.web.inspect import PictureStore, inspected, validation_scores
from apps.web.training import JobError, Trainer, offered_models
from vad.detector import Detector
from vad.images import IMAGE_EXTENSIONS

HERE = Path(__file__).resolve().parent
COOKIE = "vad_token"
CSRF_HEADER = "x-vad-csrf"
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
        "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
}
STATIC = {"ui.js": "text/javascript; charset=utf-8", "ui.css": "text/css; charset=utf-8"}
MAX_FOLDER_IMAGES = 64


@dataclass
class UiContext:
    """What the page works on.

    Attributes:
        project: The project folder (the plan's folder: artifacts and history).
        plan_path: The user's plan (copied, never edited).
        models: The served model's ``models`` folder.
        data_root: Folders the page may read images and train data from (None: uploads only, no training).
    """

    project: Path
    plan_path: Path
    models: Path
    data_root: Path | None
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(32))


class UiError(Exception):
    """A request the page answers with one line (status and message)."""

    def __init__(self, status: int, message: str) -> None:
        """Keep the status."""
        super().__init__(message)
        self.status = status


def _same_origin(request: Request) -> bool:
    origin = request.headers.get("origin")
    if origin is not None and origin != f"{request.url.scheme}://{request.headers.get('host', '')}":
        return False
    return request.headers.get("sec-fetch-site", "same-origin") in ("same-origin", "none")


def _inside(root: Path | None, relative: str) -> Path:
    if root is None:
        raise UiError(403, "this server has no data folder: upload images instead (start it with --data-root)")
    base = root.resolve()
    path = (base / relative).resolve()
    if not path.is_relative_to(base):
        raise UiError(403, "that folder is outside the server's data folder")
    return path


def add_ui(
    app: FastAPI, batcher: Batcher, context: UiContext, token: str | None, max_images: int, version: str
) -> None:
    """Add the pages, their JSON routes and their static files to the scoring service.

    Args:
        app: The service's FastAPI app.
        batcher: The service's batcher (the resident detector).
        context: Project, plan, model and data folder.
        token: The service's token (None: no token needed).
        max_images: Most images scored per request.
        version: The solution version (the summary's ``version``).
    """
    templates = Environment(
        loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(["html"]), auto_reload=False
    )
    pictures = PictureStore()
    trainer = Trainer(context.plan_path, context.data_root)
    router = APIRouter()
    app.router.on_shutdown.append(trainer.close)

    def authorized(request: Request) -> bool:
        return token is None or token_matches(bearer(request) or request.cookies.get(COOKIE, ""), token)

    def page(request: Request, name: str, **values: Any) -> Response:
        if not authorized(request):
            return RedirectResponse("/ui/login", 303)
        html = templates.get_template(name).render(csrf=context.csrf, page=name.removesuffix(".html"), **values)
        return HTMLResponse(html, headers=SECURITY_HEADERS)

    def guard(request: Request, post: bool = False) -> None:
        if not authorized(request):
            raise UiError(401, "missing or wrong token: log in at /ui/login")
        if post:
            given = request.headers.get(CSRF_HEADER, "")
            if not (token_matches(given, context.csrf) and _same_origin(request)):
                raise UiError(403, "cross-site or stale request refused: reload the page and try again")

    def current_train() -> runs.RunInfo | None:
        train_id = train_id_of(context.models)
        return None if train_id is None else runs.find_run(context.project, "train", train_id)

    @app.exception_handler(UiError)
    async def ui_error(request: Request, exc: UiError) -> JSONResponse:
        del request
        return JSONResponse({"error": str(exc)}, exc.status, headers=SECURITY_HEADERS)

    @router.get("/", include_in_schema=False)
    async def home() -> Response:
        return RedirectResponse("/ui/inspect", 303)

    @router.get("/ui/static/{name}", include_in_schema=False)
    async def static(name: str) -> Response:
        if name not in STATIC:
            raise UiError(404, "no such file")
        return FileResponse(HERE / "static" / name, media_type=STATIC[name], headers={"Cache-Control": "max-age=300"})

    @router.get("/ui/login", include_in_schema=False)
    async def login_page(request: Request) -> Response:
        html = templates.get_template("login.html").render(csrf="", page="login", message="")
        del request
        return HTMLResponse(html, headers=SECURITY_HEADERS)

    @router.post("/ui/login", include_in_schema=False)
    async def login(request: Request) -> Response:
        if not _same_origin(request):
            raise UiError(403, "cross-site request refused")
        form = await request.form(max_files=0, max_fields=2)
        given = str(form.get("token", ""))
        if token is not None and not token_matches(given, token):
            html = templates.get_template("login.html").render(csrf="", page="login", message="wrong token")
            return HTMLResponse(html, 401, headers=SECURITY_HEADERS)
        response = RedirectResponse("/ui/inspect", 303)
        if token is not None:
            response.set_cookie(COOKIE, given, httponly=True, samesite="strict", secure=request.url.scheme == "https")
        return response

    @router.get("/ui/inspect", include_in_schema=False)
    async def inspect_page(request: Request) -> Response:
        return page(request, "inspect.html", max_images=max_images)

    @router.get("/ui/runs", include_in_schema=False)
    async def runs_page(request: Request) -> Response:
        return page(request, "runs.html")

    @router.get("/ui/runs/{pipeline}/{run_id}", include_in_schema=False)
    async def run_page(request: Request, pipeline: str, run_id: str) -> Response:
        run = runs.find_run(context.project, pipeline, run_id)
        if run is None:
            return page(request, "missing.html", what=f"{pipeline} run {run_id}")
        return page(request, "run.html", run=run.as_dict())

    @router.get("/ui/threshold", include_in_schema=False)
    async def threshold_current(request: Request) -> Response:
        run = current_train()
        if run is None:
            return page(request, "missing.html", what="the train run of the served model")
        return RedirectResponse(f"/ui/threshold/{run.run_id}", 303)

    @router.get("/ui/threshold/{run_id}", include_in_schema=False)
    async def threshold_page(request: Request, run_id: str) -> Response:
        run = runs.find_run(context.project, "train", run_id)
        if run is None:
            return page(request, "missing.html", what=f"train run {run_id}")
        return page(request, "threshold.html", run=run.as_dict())

    @router.get("/ui/train", include_in_schema=False)
    async def train_page(request: Request) -> Response:
        return page(request, "train.html", models=offered_models())

    @router.get("/ui/api/folders", include_in_schema=False)
    async def folders(request: Request) -> dict[str, Any]:
        guard(request)

        def listing() -> dict[str, Any]:
            images: dict[str, int] = {}
            if context.data_root is not None:
                base = context.data_root.resolve()
                for path in base.rglob("*"):
                    if path.suffix.lower() in IMAGE_EXTENSIONS and not any(p.startswith(".") for p in path.parts):
                        key = path.parent.relative_to(base).as_posix()
                        images[key] = images.get(key, 0) + 1
            return {
                "image_folders": [{"folder": k, "images": v} for k, v in sorted(images.items())][:500],
                "train_folders": trainer.data_folders(),
            }

        return await run_in_threadpool(listing)

    @router.post("/ui/api/inspect", include_in_schema=False)
    async def inspect(request: Request) -> dict[str, Any]:
        guard(request, post=True)
        names, images = await _inspect_images(request, context.data_root, max_images)
        found = await asyncio.wrap_future(batcher.submit(images, True))
        detector: Detector = await asyncio.wrap_future(batcher.resolve())
        calibration = detector.calibration

        def build() -> dict[str, Any]:
            results = [inspected(n, i, p, pictures) for n, i, p in zip(names, images, found, strict=True)]
            run = current_train()
            return {
                "results": results,
                "summary": batch_summary(detector, names, found, version),
                "threshold": calibration.inference_threshold,
                "validation": validation_scores(run.folder if run else None, calibration.ok_name),
                "ok_name": calibration.ok_name,
                "ng_name": calibration.ng_name,
            }

        return await run_in_threadpool(build)

    @router.get("/ui/api/picture/{key}", include_in_schema=False)
    async def picture(request: Request, key: str) -> Response:
        guard(request)
        data = pictures.get(key)
        if data is None:
            raise UiError(404, "this picture is no longer kept: score the image again")
        return Response(data, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})

    @router.get("/ui/api/runs", include_in_schema=False)
    async def run_list(request: Request) -> dict[str, Any]:
        guard(request)
        found = await run_in_threadpool(runs.list_runs, context.project)
        return {"runs": [run.as_dict() for run in found]}

    @router.get("/ui/api/runs/{pipeline}/{run_id}", include_in_schema=False)
    async def run_detail(request: Request, pipeline: str, run_id: str) -> dict[str, Any]:
        guard(request)
        run = await run_in_threadpool(runs.find_run, context.project, pipeline, run_id)
        if run is None:
            raise UiError(404, f"no {pipeline} run {run_id}")
        rows = await run_in_threadpool(runs.output_rows, run)
        return {"run": run.as_dict(), "rows": rows, "log": await run_in_threadpool(runs.log_text, run)}

    @router.get("/ui/api/runs/{pipeline}/{run_id}/file/{relative:path}", include_in_schema=False)
    async def run_file(request: Request, pipeline: str, run_id: str, relative: str) -> Response:
        guard(request)
        found = await run_in_threadpool(runs.find_folder, context.project, pipeline, run_id)
        path = runs.run_file(found[0], relative) if found is not None else None
        if path is None or path.suffix.lower() not in IMAGE_EXTENSIONS:
            raise UiError(404, "no such picture in this run")
        return FileResponse(path, headers={"Cache-Control": "private, max-age=300"})

    @router.get("/ui/api/threshold/{run_id}", include_in_schema=False)
    async def threshold(request: Request, run_id: str) -> dict[str, Any]:
        guard(request)
        run = await run_in_threadpool(runs.find_run, context.project, "train", run_id)
        view = await run_in_threadpool(explorer.sweep_view, run) if run is not None else None
        if view is None:
            raise UiError(404, f"train run {run_id} has no threshold sweep (it needs validation images)")
        served = train_id_of(context.models)
        return {**view, "run": run.as_dict(), "served": served == run_id, "plan": context.plan_path.name}

    @router.post("/ui/api/threshold/{run_id}", include_in_schema=False)
    async def use_threshold(request: Request, run_id: str) -> dict[str, Any]:
        guard(request, post=True)
        body = await _json(request)
        row = body.get("row")
        if not isinstance(row, int):
            raise UiError(400, 'send {"row": <sweep row index>}')
        if train_id_of(context.models) != run_id:
            raise UiError(409, "this run's model is not the one the plan serves: its normalisation would not apply")
        run = await run_in_threadpool(runs.find_run, context.project, "train", run_id)
        if run is None:
            raise UiError(404, f"no train run {run_id}")
        try:
            copy, value = await run_in_threadpool(explorer.use_threshold, context.plan_path, run, row)
        except ValueError as exc:
            raise UiError(400, str(exc)) from None
        return {"plan": copy.path.name, "diff": copy.diff, "inference_threshold": value}

    @router.get("/ui/api/train", include_in_schema=False)
    async def train_status(request: Request, since: int = 0) -> dict[str, Any]:
        guard(request)
        job = trainer.job
        return {"state": "idle"} if job is None else job.view(since)

    @router.post("/ui/api/train", include_in_schema=False)
    async def train_start(request: Request) -> dict[str, Any]:
        guard(request, post=True)
        body = await _json(request)
        try:
            job = await run_in_threadpool(
                trainer.start,
                str(body.get("folder", "")),
                str(body.get("model", "")),
                int(body.get("max_epochs", 15)),
                int(body.get("batch_size", 4)),
            )
        except (TypeError, ValueError) as exc:
            raise UiError(400, f"bad train settings: {exc}") from None
        except JobError as exc:
            raise UiError(exc.status, str(exc)) from None
        return job.view()

    @router.post("/ui/api/train/cancel", include_in_schema=False)
    async def train_cancel(request: Request) -> dict[str, Any]:
        guard(request, post=True)
        try:
            return trainer.cancel().view()
        except JobError as exc:
            raise UiError(exc.status, str(exc)) from None

    app.include_router(router)


async def _json(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise UiError(400, "the body is not JSON") from None
    if not isinstance(body, dict):
        raise UiError(400, "send a JSON object")
    return body


async def _inspect_images(request: Request, data_root: Path | None, max_images: int) -> tuple[list[str], list]:
    """Uploads (multipart ``files``) or the images of a data folder (JSON ``{"folder": ...}``), decoded."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "multipart/form-data":
        form = await request.form(max_files=max_images, max_fields=4)
        uploads = [item for item in form.getlist("files") if hasattr(item, "read")]
        if not uploads:
            raise UiError(400, "no images: drop or choose image files")
        names = [str(upload.filename or f"upload-{i}") for i, upload in enumerate(uploads)]
        contents = [await upload.read() for upload in uploads]
    else:
        body = await _json(request)
        folder = _inside(data_root, str(body.get("folder", "")))
        files = sorted(p for p in folder.glob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            raise UiError(404, "that folder holds no images")
        files = files[:max_images]
        names = [p.relative_to(data_root.resolve()).as_posix() for p in files]  # type: ignore[union-attr]
        contents = await run_in_threadpool(lambda: [p.read_bytes() for p in files])
    try:
        return names, await run_in_threadpool(decode_all, names, contents)
    except ApiError as exc:
        raise UiError(exc.status, str(exc)) from None
