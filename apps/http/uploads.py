"""The images of a request: multipart uploads or JSON paths inside the data folder, decoded by content."""

from __future__ import annotations

from pathlib import Path

from fastapi import Request
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from alo.errors import AloError, one_line
from apps.http.errors import ApiError
from apps.http.schemas import PathsRequest
from vad.images import decode_image


async def request_images(
    request: Request, max_images: int, data_root: Path | None
) -> tuple[list[str], list[bytes], list]:
    """The names, file contents and decoded images of a predict request.

    Args:
        request: The request (multipart field ``files``, or JSON ``{"paths": [...]}``).
        max_images: Most images one request may carry.
        data_root: The folder JSON paths must stay inside (None: uploads only).

    Returns:
        The names, the files' bytes (kept for review after the answer) and the images.

    Raises:
        ApiError: 400, 403, 404 or 415 with the one-line reason (a body over the limit is the middleware's 413).
    """
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "multipart/form-data":
        names, contents = await read_uploads(request, max_images, max_fields=16)
        if not names:
            raise ApiError(400, "no images: send them as multipart form field 'files'")
        _check_count(len(names), max_images)
        return names, contents, await run_in_threadpool(decode_all, names, contents)
    if kind == "application/json":
        paths = paths_of(await request.body())
        _check_count(len(paths), max_images)
        files = [inside(data_root, path) for path in paths]
        contents = await run_in_threadpool(lambda: [file.read_bytes() for file in files])
        return paths, contents, await run_in_threadpool(decode_all, paths, contents)
    raise ApiError(415, "send images as multipart/form-data (field 'files') or JSON {\"paths\": [...]}")


async def read_uploads(request: Request, max_images: int, max_fields: int) -> tuple[list[str], list[bytes]]:
    """The files of a multipart request's ``files`` field: their names (or ``upload-<i>``) and bytes.

    Args:
        request: A ``multipart/form-data`` request.
        max_images: Most files the form may carry (starlette refuses more).
        max_fields: Most other fields it may carry.

    Returns:
        The names and contents (empty when the field holds no file).
    """
    form = await request.form(max_files=max_images, max_fields=max_fields)
    uploads = [item for item in form.getlist("files") if isinstance(item, UploadFile)]
    names = [str(upload.filename or f"upload-{i}") for i, upload in enumerate(uploads)]
    return names, [await upload.read() for upload in uploads]


def paths_of(body: bytes) -> list[str]:
    """The paths of a JSON predict body, read by :class:`PathsRequest` (the model ``/openapi.json`` documents).

    Raises:
        ApiError: 400 for a body that is not JSON, or not ``{"paths": [...]}`` with at least one path.
    """
    try:
        return PathsRequest.model_validate_json(body).paths
    except ValidationError as exc:
        if any(error["type"] == "json_invalid" for error in exc.errors()):
            raise ApiError(400, 'the body is not JSON; send {"paths": [...]}') from None
        raise ApiError(400, 'send {"paths": ["image.png", ...]}: a non-empty list of file paths') from None


def _check_count(count: int, max_images: int) -> None:
    if count > max_images:
        raise ApiError(400, f"{count} images in one request; send at most {max_images}")


def inside(root: Path | None, path: str) -> Path:
    """A file a request names, refused unless it is inside the data folder and exists."""
    if root is None:
        raise ApiError(403, "this server has no data folder: upload the images instead (start it with --data-root)")
    shown = one_line(path)[:120]
    base = root.resolve()
    try:
        candidate = Path(path)
        resolved = (candidate if candidate.is_absolute() else base / candidate).resolve()
        outside = not resolved.is_relative_to(base)
        found = not outside and resolved.is_file()
    except (OSError, ValueError):  # a NUL byte, a name too long for the file system: no file of the folder
        outside, found = False, False
    if outside:
        raise ApiError(403, f"{shown} is outside the server's data folder; send a path inside it")
    if not found:
        raise ApiError(404, f"{shown} does not exist in the server's data folder")
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
