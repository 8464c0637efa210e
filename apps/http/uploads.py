"""The images of a request: multipart uploads or JSON paths inside the data folder, decoded by content."""

from __future__ import annotations

from pathlib import Path

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from alo.errors import AloError, one_line
from apps.http.errors import ApiError
from vad.images import decode_image


async def request_images(request: Request, max_images: int, data_root: Path | None) -> tuple[list[str], list]:
    """The names and decoded images of a predict request.

    Args:
        request: The request (multipart field ``files``, or JSON ``{"paths": [...]}``).
        max_images: Most images one request may carry.
        data_root: The folder JSON paths must stay inside (None: uploads only).

    Returns:
        The names and the images.

    Raises:
        ApiError: 400, 403, 404, 413 or 415 with the one-line reason.
    """
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "multipart/form-data":
        form = await request.form(max_files=max_images, max_fields=16)
        uploads = [item for item in form.getlist("files") if hasattr(item, "read")]
        if not uploads:
            raise ApiError(400, "no images: send them as multipart form field 'files'")
        if len(uploads) > max_images:
            raise ApiError(413, f"{len(uploads)} images in one request; send at most {max_images}")
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
        if len(paths) > max_images:
            raise ApiError(413, f"{len(paths)} images in one request; send at most {max_images}")
        files = [inside(data_root, path) for path in paths]
        contents = await run_in_threadpool(lambda: [file.read_bytes() for file in files])
        return list(paths), await run_in_threadpool(decode_all, list(paths), contents)
    raise ApiError(415, "send images as multipart/form-data (field 'files') or JSON {\"paths\": [...]}")


def inside(root: Path | None, path: str) -> Path:
    """A file a request names, refused unless it is inside the data folder and exists."""
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
