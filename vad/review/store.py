"""Keep scored images for review: copies in ``review/images/``, one line each in ``review/index.jsonl``.

Batch inference, the edge loop and the HTTP API hand over what they scored; the store copies each image under a
name of its own (``<id><ext>``: the source's name is recorded as text, never used as a path) and appends its
line. PNG, JPEG and BMP are copied byte for byte (the format read from the content, not the name); other formats
are written as lossless PNG, upright. The same picture (by SHA-256) is kept once.

The folder's size is capped (the plan's ``control.review_size_mb``, 0 keeps nothing): to make room, the oldest
images without a verdict are pruned first; images with a verdict are never pruned (``feedback.csv`` names them:
they are training data). When the reviewed images alone fill the cap, nothing more is kept until verdicts are
folded in or the cap is raised. Writes hold the folder's lock (threads and processes), so the scoring service,
a batch run and the edge loop may keep images at once.
"""

from __future__ import annotations

import hashlib
import io
import secrets
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from vad.images import to_rgb
from vad.output_images import PNG_MODES
from vad.review.entries import (
    ID_PATTERN,
    IMAGES,
    INDEX,
    Origin,
    ReviewEntry,
    ScoredImage,
    iso_time,
    read_index,
    utc_now,
)
from vad.review.feedback import reviewed_ids
from vad.review.files import append_lines, folder_lock, replace_text

FOLDER = "review"  # beside the plan file
DEFAULT_SIZE_MB = 200
KEEP_PER_RUN = 200  # the most images one run or request keeps (the most informative ones: vad.review.queue)
COPIED_FORMATS = {"PNG": ".png", "JPEG": ".jpg", "BMP": ".bmp"}  # kept byte for byte; others become PNG
MB = 1024 * 1024


@dataclass(frozen=True)
class ImageToKeep:
    """A scored image handed to the store: a file to copy, or an upload's bytes.

    Attributes:
        scored: What it scored.
        path: The scored file (batch inference, the edge loop, a path sent to the HTTP API).
        data: The upload's bytes (the HTTP API), used where given.
    """

    scored: ScoredImage
    path: Path | None = None
    data: bytes | None = None


@dataclass
class KeepReport:
    """What one :meth:`ReviewStore.keep` did.

    Attributes:
        kept: The new entries.
        duplicates: Images already kept (the same bytes).
        no_room: Images left out because the reviewed images fill the cap.
        unreadable: Images that could not be read as an image.
        pruned: Older unreviewed images pruned to make room.
    """

    kept: list[ReviewEntry] = field(default_factory=list)
    duplicates: int = 0
    no_room: int = 0
    unreadable: int = 0
    pruned: int = 0


class ReviewStore:
    """The review folder: keeps scored images within its size cap, and finds them again."""

    def __init__(self, folder: Path, size_mb: float = DEFAULT_SIZE_MB) -> None:
        """Point at a review folder (created on the first image kept).

        Args:
            folder: The folder (``review/`` beside the plan file).
            size_mb: The cap of the kept images in MB (0: keep nothing).
        """
        self.folder = folder
        self.size_mb = size_mb

    @classmethod
    def of_project(cls, project: Path, size_mb: float = DEFAULT_SIZE_MB) -> ReviewStore:
        """The review store of a project (the folder holding the plan file).

        Args:
            project: The plan's folder.
            size_mb: The cap in MB (the plan's ``control.review_size_mb``).

        Returns:
            The store of ``project/review``.
        """
        return cls(project / FOLDER, size_mb)

    def entries(self) -> list[ReviewEntry]:
        """The kept images, oldest first."""
        return read_index(self.folder)

    def image_file(self, entry_id: str) -> Path | None:
        """The kept copy of an image by its id (None: no such id, or its file is gone).

        Args:
            entry_id: The entry's id (anything else is refused before a path is built).

        Returns:
            The file, inside ``images/``.
        """
        if not ID_PATTERN.match(entry_id):
            return None
        entry = next((e for e in self.entries() if e.id == entry_id), None)
        if entry is None:
            return None
        path = (self.folder / entry.image).resolve()
        inside = path.is_relative_to((self.folder / IMAGES).resolve())
        return path if inside and path.is_file() else None

    def keep(self, images: Iterable[ImageToKeep], origin: Origin, train_id: str | None) -> KeepReport:
        """Copy images into the store and index them, pruning the oldest unreviewed ones to stay under the cap.

        Images of this call are never pruned by later ones of the same call (hand the most informative first).

        Args:
            images: The scored images.
            origin: ``inference``, ``loop`` or ``http``.
            train_id: The train run of the model that scored them (None: unknown).

        Returns:
            What was kept, and what was not and why.
        """
        report = KeepReport()
        if self.size_mb <= 0:
            return report
        cap = int(self.size_mb * MB)
        with folder_lock(self.folder):
            entries = read_index(self.folder)
            reviewed = reviewed_ids(self.folder)
            known = {entry.sha256 for entry in entries}
            ids = {entry.id for entry in entries}
            used = sum(entry.bytes for entry in entries)
            prunable = deque(entry for entry in entries if entry.id not in reviewed)
            pruned: list[ReviewEntry] = []
            for image in images:
                content = image_content(image)
                if content is None:
                    report.unreadable += 1
                    continue
                data, suffix = content
                digest = hashlib.sha256(data).hexdigest()
                if digest in known:
                    report.duplicates += 1
                    continue
                while used + len(data) > cap and prunable:
                    victim = prunable.popleft()
                    pruned.append(victim)
                    used -= victim.bytes
                if used + len(data) > cap:
                    report.no_room += 1
                    continue
                entry = self._write(image.scored, data, suffix, digest, origin, train_id, ids)
                report.kept.append(entry)
                known.add(digest)
                ids.add(entry.id)
                used += len(data)
            self._index(entries, pruned, report.kept)
            report.pruned = len(pruned)
        return report

    def _write(
        self, scored: ScoredImage, data: bytes, suffix: str, digest: str, origin: Origin, train_id: str | None,
        taken: set[str],
    ) -> ReviewEntry:  # fmt: skip
        """Write one image's copy (through a temporary file) and return its entry (not yet indexed)."""
        now = utc_now()
        entry_id = f"{now:%Y%m%dT%H%M%S}-{secrets.token_hex(4)}"
        while entry_id in taken:
            entry_id = f"{now:%Y%m%dT%H%M%S}-{secrets.token_hex(4)}"
        relative = f"{IMAGES}/{entry_id}{suffix}"
        target = self.folder / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = target.with_name(f".{target.name}.tmp")
        temporary.write_bytes(data)
        temporary.replace(target)
        return ReviewEntry(
            id=entry_id,
            time=iso_time(now),
            origin=origin,
            source=scored.source,
            image=relative,
            anomaly_score=float(scored.anomaly_score),
            raw_score=None if scored.raw_score is None else float(scored.raw_score),
            pred_label=str(scored.pred_label),
            certainty=None if scored.certainty is None else float(scored.certainty),
            ood_score=None if scored.ood_score is None else float(scored.ood_score),
            in_distribution=None if scored.in_distribution is None else bool(scored.in_distribution),
            label=scored.label,
            train_id=train_id,
            bytes=len(data),
            sha256=digest,
        )

    def _index(self, entries: list[ReviewEntry], pruned: list[ReviewEntry], kept: list[ReviewEntry]) -> None:
        """Index the new entries; with pruned ones, rewrite the index without them, then delete their files."""
        path = self.folder / INDEX
        if not pruned:
            append_lines(path, [entry.line() for entry in kept])
            return
        gone = {entry.id for entry in pruned}
        lines = [entry.line() for entry in entries if entry.id not in gone] + [entry.line() for entry in kept]
        replace_text(path, "".join(f"{line}\n" for line in lines))
        for entry in pruned:
            (self.folder / entry.image).unlink(missing_ok=True)


def image_content(image: ImageToKeep) -> tuple[bytes, str] | None:
    """The bytes to keep for an image and their extension: PNG, JPEG and BMP as they are, others as lossless PNG.

    Args:
        image: The image (its bytes, or its file).

    Returns:
        The bytes and the extension, or None when it cannot be read as an image.
    """
    try:
        data = image.data if image.data is not None else image.path.read_bytes() if image.path else b""
        with Image.open(io.BytesIO(data)) as opened:
            kind = str(opened.format)
            if kind in COPIED_FORMATS:
                return data, COPIED_FORMATS[kind]
            opened.load()
            upright = ImageOps.exif_transpose(opened)
            picture = upright if upright.mode in PNG_MODES else to_rgb(upright)
            buffer = io.BytesIO()
            picture.save(buffer, format="PNG")
            return buffer.getvalue(), ".png"
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError):
        return None
