"""Micro-batching: images of concurrent requests scored together by one thread (one model, no contention).

Requests put their decoded images on a queue and wait on a future. One worker thread takes the first
waiting request and, for at most ``window`` seconds, the requests that queue behind it (same heatmap
choice, up to ``batch_size`` images), and scores them in one ``Detector.predict`` call: the batch
pipeline's throughput for several clients, no queueing delay for one.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

from PIL import Image

from assets.vad.detector import Detector, Prediction

logger = logging.getLogger("assets.batcher")


@dataclass
class _Job:
    images: list[Image.Image]
    heatmaps: bool
    future: Future = field(default_factory=Future)


class Batcher:
    """Scores images from many threads through one detector, in shared batches."""

    def __init__(self, detector: Callable[[], Detector], batch_size: int = 8, window: float = 0.002) -> None:
        """Start the worker thread.

        Args:
            detector: Returns the detector to use (called per batch: a replaced model is picked up).
            batch_size: Images per scoring batch.
            window: Seconds the worker waits for more requests to join a batch.
        """
        self.detector = detector
        self.batch_size = batch_size
        self.window = window
        self._jobs: queue.Queue[_Job | None] = queue.Queue()
        self._thread = threading.Thread(target=self._work, name="vad-batcher", daemon=True)
        self._thread.start()

    def submit(self, images: list[Image.Image], heatmaps: bool = False) -> Future:
        """Queue images for scoring.

        Args:
            images: Decoded RGB images.
            heatmaps: Whether their heatmap pictures are wanted.

        Returns:
            A future of their predictions, in order.
        """
        job = _Job(images, heatmaps)
        self._jobs.put(job)
        return job.future

    def close(self) -> None:
        """Stop the worker after the queued jobs."""
        self._jobs.put(None)
        self._thread.join(timeout=60)

    def _work(self) -> None:
        held: _Job | None = None
        while True:
            job = held or self._jobs.get()
            held = None
            if job is None:
                return
            jobs, count = [job], len(job.images)
            while count < self.batch_size:
                try:
                    more = self._jobs.get(timeout=self.window)
                except queue.Empty:
                    break
                if more is None or more.heatmaps != job.heatmaps or count + len(more.images) > self.batch_size:
                    held = more
                    break
                jobs.append(more)
                count += len(more.images)
            self._run(jobs)

    def _run(self, jobs: list[_Job]) -> None:
        images = [image for job in jobs for image in job.images]
        try:
            found: list[Prediction] = self.detector().predict(images, heatmaps=jobs[0].heatmaps)
        except BaseException as exc:  # every waiting request gets the failure
            for job in jobs:
                job.future.set_exception(exc)
            return
        start = 0
        for job in jobs:
            job.future.set_result(found[start : start + len(job.images)])
            start += len(job.images)
