"""The page's JSON routes (``/ui/api``): scoring, pictures, runs, threshold explorer, review, training, versions.

The versions routes list the kept model versions, start an update from the verdicts and make a version active.

One module-level router whose own dependency is the token (:func:`require_login`), so no route added to it can
go without; every POST depends on :func:`require_csrf` as well. The page's state comes through
:data:`PageDep`. These routes serve the page, not clients: they are left out of ``/openapi.json``.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse, Response
from starlette.concurrency import run_in_threadpool

from alo.errors import ModelError
from alo.runner import train_id_of
from apps.http.errors import ApiError
from apps.http.summary import batch_summary
from apps.http.uploads import decode_all, read_uploads
from apps.web import explorer, review, runs, versions
from apps.web.inspect import inspected, validation_scores
from apps.web.state import PageDep, UiError, inside, require_csrf, require_login
from apps.web.training import JobError, JobView, Trainer
from vad.detector import Detector
from vad.images import IMAGE_EXTENSIONS
from vad.review.store import ReviewStore

MAX_LISTED_FOLDERS = 500

router = APIRouter(prefix="/ui/api", include_in_schema=False, dependencies=[Depends(require_login)])
POST = [Depends(require_csrf)]


@router.get("/folders")
async def folders(page: PageDep) -> dict[str, Any]:
    """The data root's folders holding images, and those holding train data."""
    return await run_in_threadpool(image_folders, page.context.data_root, page.trainer)


@router.post("/inspect", dependencies=POST)
async def inspect(request: Request, page: PageDep) -> dict[str, Any]:
    """Score uploads or a data folder's images: each with its pictures, the batch summary and the histogram."""
    names, images = await _inspect_images(request, page.context.data_root, page.max_images)
    found = await asyncio.wrap_future(page.batcher.submit(images, True))
    detector: Detector = await asyncio.wrap_future(page.batcher.resolve())
    calibration = detector.calibration

    def build() -> dict[str, Any]:
        results = [inspected(n, i, p, page.pictures) for n, i, p in zip(names, images, found, strict=True)]
        run = page.current_train()
        return {
            "results": results,
            "summary": batch_summary(detector, names, found, page.version),
            "threshold": calibration.inference_threshold,
            "validation": validation_scores(run.folder if run else None, calibration.ok_name),
            "ok_name": calibration.ok_name,
            "ng_name": calibration.ng_name,
            "model_version": versions.served_version(page.context.project, page.context.models),
        }

    return await run_in_threadpool(build)


@router.get("/picture/{key}")
async def picture(page: PageDep, key: str) -> Response:
    """A picture of a scored image (original or heatmap overlay), while it is kept."""
    data = page.pictures.get(key)
    if data is None:
        raise UiError(404, "this picture is no longer kept: score the image again")
    return Response(data, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})


@router.get("/runs")
async def run_list(page: PageDep) -> dict[str, Any]:
    """The project's runs, newest first."""
    found = await run_in_threadpool(runs.list_runs, page.context.project)
    return {"runs": [run.as_dict() for run in found]}


@router.get("/runs/{pipeline}/{run_id}")
async def run_detail(page: PageDep, pipeline: str, run_id: str) -> dict[str, Any]:
    """A run with its ``output.csv`` rows and its logs."""
    run = await run_in_threadpool(runs.find_run, page.context.project, pipeline, run_id)
    if run is None:
        raise UiError(404, f"no {pipeline} run {run_id}")
    rows = await run_in_threadpool(runs.output_rows, run)
    return {"run": run.as_dict(), "rows": rows, "log": await run_in_threadpool(runs.log_text, run)}


@router.get("/runs/{pipeline}/{run_id}/file/{relative:path}")
async def run_file(page: PageDep, pipeline: str, run_id: str, relative: str) -> Response:
    """A picture inside a run's folder (never a path outside it, never a file that is not an image)."""
    found = await run_in_threadpool(runs.find_folder, page.context.project, pipeline, run_id)
    path = runs.run_file(found[0], relative) if found is not None else None
    if path is None or path.suffix.lower() not in IMAGE_EXTENSIONS:
        raise UiError(404, "no such picture in this run")
    return FileResponse(path, headers={"Cache-Control": "private, max-age=300"})


@router.get("/threshold/{run_id}")
async def threshold(page: PageDep, run_id: str) -> dict[str, Any]:
    """A train run's validation sweep, as the explorer shows it."""
    run = await run_in_threadpool(runs.find_run, page.context.project, "train", run_id)
    view = await run_in_threadpool(explorer.sweep_view, run) if run is not None else None
    if run is None or view is None:
        raise UiError(404, f"train run {run_id} has no threshold sweep (it needs validation images)")
    served = train_id_of(page.context.models)
    return {**view, "run": run.as_dict(), "served": served == run_id, "plan": page.context.plan_path.name}


@router.post("/threshold/{run_id}", dependencies=POST)
async def use_threshold(request: Request, page: PageDep, run_id: str) -> dict[str, Any]:
    """Write a plan copy whose ``inference_threshold`` decides at the chosen sweep row."""
    row = (await json_object(request)).get("row")
    if not isinstance(row, int):
        raise UiError(400, 'send {"row": <sweep row index>}')
    context = page.context
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


@router.get("/review")
async def review_queue(page: PageDep, limit: int = review.BATCH) -> review.ReviewBatch:
    """A batch of the review queue: its first ``limit`` images, most informative first.

    With the queue's length, the verdicts waiting for the next update, and the served model's names and threshold.
    """
    calibration = (await asyncio.wrap_future(page.batcher.resolve())).calibration
    store = ReviewStore.of_project(page.context.project)
    return await run_in_threadpool(
        review.queue_batch,
        store,
        page.context.models,
        calibration.ok_name,
        calibration.ng_name,
        calibration.inference_threshold,
        limit,
    )


@router.get("/review/image/{review_id}")
async def review_image(page: PageDep, review_id: str) -> Response:
    """A kept image by its review id (never by a path)."""
    path = await run_in_threadpool(ReviewStore.of_project(page.context.project).image_file, review_id)
    if path is None:
        raise UiError(404, "no such image to review (pruned, or never kept)")
    return FileResponse(path, headers={"Cache-Control": "private, max-age=3600"})


@router.post("/review", dependencies=POST)
async def review_verdicts(page: PageDep, given: review.VerdictsIn) -> review.VerdictsOut:
    """Write a batch's verdicts (OK or NG per review id) to ``review/feedback.csv``."""
    calibration = (await asyncio.wrap_future(page.batcher.resolve())).calibration
    store = ReviewStore.of_project(page.context.project)
    try:
        return await run_in_threadpool(
            review.submit, store, page.context.models, given, calibration.ok_name, calibration.ng_name
        )
    except review.UnknownImageError as exc:
        raise UiError(404, str(exc)) from None


@router.get("/train")
async def train_status(page: PageDep, since: int = 0) -> dict[str, Any]:
    """The page's train run (its console lines from line ``since`` on), or ``idle``."""
    job = page.trainer.job
    return {"state": "idle"} if job is None else job.view(since).model_dump()


@router.post("/train", dependencies=POST)
async def train_start(request: Request, page: PageDep) -> dict[str, Any]:
    """Start a train run on a plan copy with the chosen folder, model and arguments (one at a time)."""
    body = await json_object(request)
    try:
        job = await run_in_threadpool(
            page.trainer.start,
            str(body.get("folder", "")),
            str(body.get("model", "")),
            int(body.get("max_epochs", 15)),
            int(body.get("batch_size", 4)),
        )
    except (TypeError, ValueError) as exc:
        raise UiError(400, f"bad train settings: {exc}") from None
    except JobError as exc:
        raise UiError(exc.status, str(exc)) from None
    return job.view().model_dump()


@router.post("/train/cancel", dependencies=POST)
async def train_cancel(page: PageDep) -> dict[str, Any]:
    """Cancel the running train run (its staged run is kept as a failed run)."""
    try:
        return page.trainer.cancel().view().model_dump()
    except JobError as exc:
        raise UiError(exc.status, str(exc)) from None


@router.get("/versions")
async def version_list(page: PageDep, since: int = 0) -> versions.VersionsView:
    """The kept model versions (newest first), the active one, and whether an update can start.

    With the page's latest job (a train run or an update) and its console lines from line ``since`` on.
    """
    context = page.context
    try:
        return await run_in_threadpool(versions.versions_view, context.project, context.models, page.trainer, since)
    except ModelError as exc:
        raise UiError(500, str(exc)) from None


@router.post("/versions/update", dependencies=POST)
async def version_update(page: PageDep) -> JobView:
    """Start ``main.py --mode update`` (the verdicts not yet learnt, as a new version); 409 while a job runs."""
    try:
        return await run_in_threadpool(versions.start_update, page.context.project, page.trainer)
    except JobError as exc:
        raise UiError(exc.status, str(exc)) from None


@router.post("/versions/{number}/activate", dependencies=POST)
async def version_activate(page: PageDep, number: int) -> versions.ActivatedOut:
    """Make a kept version the active model (a rollback); 404 for an unknown version, 409 while a job runs."""
    context = page.context
    try:
        return await run_in_threadpool(versions.make_active, context.project, context.plan_path, page.trainer, number)
    except versions.UnknownVersionError as exc:
        raise UiError(404, str(exc)) from None
    except JobError as exc:
        raise UiError(exc.status, str(exc)) from None


def image_folders(data_root: Path | None, trainer: Trainer) -> dict[str, Any]:
    """The folders of the data root with images (and how many), and those with train data.

    Args:
        data_root: The page's data folder (None: none).
        trainer: The trainer (its train data folders).

    Returns:
        ``image_folders`` (folder, images) and ``train_folders``.
    """
    images: dict[str, int] = {}
    if data_root is not None:
        base = data_root.resolve()
        for path in base.rglob("*"):
            if path.suffix.lower() in IMAGE_EXTENSIONS and not any(p.startswith(".") for p in path.parts):
                key = path.parent.relative_to(base).as_posix()
                images[key] = images.get(key, 0) + 1
    listed = [{"folder": k, "images": v} for k, v in sorted(images.items())][:MAX_LISTED_FOLDERS]
    return {"image_folders": listed, "train_folders": trainer.data_folders()}


async def json_object(request: Request) -> dict[str, Any]:
    """The request's JSON object body (400 when it is not JSON, or not an object)."""
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
        names, contents = await read_uploads(request, max_images, max_fields=4)
        if not names:
            raise UiError(400, "no images: drop or choose image files")
    else:
        folder = inside(data_root, str((await json_object(request)).get("folder", "")))
        files = sorted(p for p in folder.glob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            raise UiError(404, "that folder holds no images")
        files = files[:max_images]
        assert data_root is not None  # inside() refuses a server without a data folder
        names = [p.relative_to(data_root.resolve()).as_posix() for p in files]
        contents = await run_in_threadpool(lambda: [p.read_bytes() for p in files])
    try:
        return names, await run_in_threadpool(decode_all, names, contents)
    except ApiError as exc:
        raise UiError(exc.status, str(exc)) from None
