"""PatchCore's scoring after the embedding: the memory-bank search, the exact map peak and the head (no torch).

Every scoring path of PatchCore ends here on the CPU: the model while it validates, the torch scorer of a loaded
model (:mod:`.scorer`) and the exported runtime after its graph. The graph (or torch) gives each patch's
embedding; :class:`PatchcoreTail` searches the memory bank (:class:`~.search.BankIndex`), finds each map's
exact peak from inverted-file bounds (:func:`~.peaks.peak_maps`) and adds the supervised head's offset
(:mod:`.head`). One definition, so the runtimes agree by construction; the export's parity gate still
compares them on the validation images (the graph's embedding may differ by float rounding).
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from vad.models.patchcore.head import head_offsets
from vad.models.patchcore.peaks import GridBlur, peak_maps
from vad.models.patchcore.search import BankIndex

TAIL_FILE = "patchcore_tail.npz"


@cache
def _blas_controller() -> Any:
    """The threadpoolctl view of numpy's own OpenBLAS, or None (no threadpoolctl, or another BLAS)."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return None
    selected = ThreadpoolController().select(prefix="libscipy_openblas")
    return selected if selected.lib_controllers else None


def one_blas_thread() -> AbstractContextManager:
    """Run numpy's own OpenBLAS on one thread inside the block (threadpoolctl's supported switch), then restore it.

    Its threads wait spinning after each product, on the cores the graph runtime's and faiss's threads need next:
    on this 2-core machine the exported PatchCore scored 24.8 images/s with them and 37.0 without (torch: 37.3;
    the exact search, single-threaded, was no slower). Without threadpoolctl nothing changes.

    Returns:
        The context manager.
    """
    controller = _blas_controller()
    return controller.limit(limits=1) if controller is not None else nullcontext()


class PatchcoreTail:
    """Embeddings (B, h, w, D) to raw image scores and maps: PatchCore's scoring after the backbone."""

    def __init__(
        self, index: BankIndex, blur: GridBlur, head_weights: np.ndarray | None = None, head_bias: float = 0.0
    ) -> None:
        """Assemble the tail.

        Args:
            index: The memory bank's searches.
            blur: The patch grid's upsample-and-blur operator.
            head_weights: The supervised head's weights (2 * D,); None or empty: no head.
            head_bias: Its bias.
        """
        self.index = index
        self.blur = blur
        self.head_weights = np.zeros(0) if head_weights is None else np.asarray(head_weights, np.float64).reshape(-1)
        self.head_bias = float(head_bias) if len(self.head_weights) else 0.0

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], threads: int | None = None) -> PatchcoreTail:
        """Build from the arrays :meth:`save` writes.

        Args:
            arrays: ``bank`` (M, D); ``centroids`` (lists, D; empty: exact search); ``rows`` (H x h) and
                ``columns_t`` (w x W), the grid's upsample-and-blur matrices; ``head_weights`` and
                ``head_bias`` where the model has a supervised head (absent or empty: none).
            threads: faiss's thread count (None: faiss's default).

        Returns:
            The tail.
        """
        weights = np.asarray(arrays.get("head_weights", np.zeros(0)), dtype=np.float64).reshape(-1)
        bias = float(np.asarray(arrays["head_bias"]).reshape(-1)[0]) if len(weights) else 0.0
        index = BankIndex(arrays["bank"], arrays["centroids"], threads)
        return cls(index, GridBlur(arrays["rows"], arrays["columns_t"]), weights, bias)

    def arrays(self) -> dict[str, np.ndarray]:
        """The arrays this tail was built from (as :meth:`save` writes them).

        Returns:
            Name -> array.
        """
        return {
            "bank": self.index.bank,
            "centroids": self.index.centroids,
            "rows": self.blur.rows,
            "columns_t": self.blur.columns_t,
            "head_weights": self.head_weights.astype(np.float32),
            "head_bias": np.array([self.head_bias] if len(self.head_weights) else [], dtype=np.float32),
        }

    @staticmethod
    def save(folder: Path, arrays: dict[str, np.ndarray]) -> Path:
        """Write a tail's arrays into ``models/export`` (``np.savez``: plain arrays, read back without pickles).

        Args:
            folder: ``models/export``.
            arrays: As :class:`PatchcoreTail` takes them (:meth:`arrays`).

        Returns:
            The file written.
        """
        path = folder / TAIL_FILE
        np.savez(path, allow_pickle=False, **{name: np.ascontiguousarray(value) for name, value in arrays.items()})
        return path

    @classmethod
    def load(cls, folder: Path) -> PatchcoreTail:
        """Read ``patchcore_tail.npz`` (plain arrays, no pickles).

        Args:
            folder: ``models/export``.

        Returns:
            The tail.
        """
        with np.load(folder / TAIL_FILE, allow_pickle=False) as saved:
            return cls.from_arrays({name: saved[name] for name in saved.files})

    def head(self, embedding: np.ndarray) -> np.ndarray:
        """The supervised head's score offsets (B,), zeros without a head.

        Args:
            embedding: (B, h, w, D).

        Returns:
            Offsets, float64.
        """
        if not len(self.head_weights):
            return np.zeros(len(embedding))
        return head_offsets(embedding, self.head_weights, self.head_bias)

    def __call__(self, embedding: np.ndarray, maps: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """Scores (B,) and maps (B, H, W) or None: the exact peak of each map, plus the head's offset.

        Args:
            embedding: (B, h, w, D) float32.
            maps: Return the maps.

        Returns:
            Scores and maps, float32.
        """
        with one_blas_thread():
            queries = np.ascontiguousarray(embedding, dtype=np.float32)
            scores, found = peak_maps(queries, self.index, self.blur, maps)
            if len(self.head_weights):
                scores = (scores + self.head(queries)).astype(np.float32)
            return scores, found
