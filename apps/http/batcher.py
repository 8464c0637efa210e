"""Micro-batching: images of concurrent requests scored together by one thread (one model, no contention).

The worker thread also loads the detector (:meth:`Batcher.resolve`): a model loaded in one thread scores about
1.3x slower in another on this CPU (``Detector.predict`` p50 43 against 33 ms an image, BENCHMARKS.md "Serving:
heatmap encoding and the scoring thread"), so the thread that scores is the thread that loads.

A request announces itself when it arrives (:meth:`Batcher.announce`), then puts its decoded images on a
queue and waits on a future. One worker thread takes the first waiting request and, while other announced
requests are still on their way (being received or decoded), waits up to ``window`` seconds for them to join
(same heatmap choice, up to ``batch_size`` images), then scores them in one ``Detector.predict`` call: the
batch pipeline's throughput for several clients, and no waiting at all for a lone one.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

from PIL import Image

from vad.detector import Detector, Prediction

logger = logging.getLogger("assets.batcher")


@dataclass
class _Job:
    images: list[Image.Image]
    heatmaps: bool
    future: Future = field(default_factory=Future)


@dataclass
class _Resolve:
    """Load (or look up) the detector in the worker thread."""

    future: Future = field(default_factory=Future)


class Batcher:
    """Scores images from many threads through one detector, in shared batches."""

    def __init__(self, detector: Callable[[], Detector], batch_size: int = 8, window: float = 0.010) -> None:
        """Start the worker thread.

        Args:
            detector: Returns the detector to use (called per batch: a replaced model is picked up).
            batch_size: Images per scoring batch.
            window: Most seconds a batch waits for announced requests to join it.
        """
        self.detector = detector
        self.batch_size = batch_size
        self.window = window
        self._coming = 0  # requests announced and not yet submitted or withdrawn
        self._lock = threading.Lock()
        self._jobs: queue.Queue[_Job | _Resolve | None] = queue.Queue()
        self._thread = threading.Thread(target=self._work, name="vad-batcher", daemon=True)
        self._thread.start()

    def resolve(self) -> Future:
        """The current detector, loaded in the worker thread if it is not yet (or was replaced on disk).

        Returns:
            A future of the detector (or of the error that loading it raised).
        """
        job = _Resolve()
        self._jobs.put(job)
        return job.future

    def announce(self) -> None:
        """Say that a request will submit soon (a batch being formed waits for it, up to ``window``)."""
        with self._lock:
            self._coming += 1

    def withdraw(self) -> None:
        """An announced request will not submit after all (it failed before scoring)."""
        with self._lock:
            self._coming -= 1

    def submit(self, images: list[Image.Image], heatmaps: bool = False, announced: bool = False) -> Future:
        """Queue images for scoring.

        Args:
            images: Decoded RGB images.
            heatmaps: Whether their heatmap pictures are wanted.
            announced: The request called :meth:`announce` when it arrived.

        Returns:
            A future of their predictions, in order.
        """
        job = _Job(images, heatmaps)
        self._jobs.put(job)
        if announced:
            self.withdraw()
        return job.future

    def close(self) -> None:
        """Stop the worker after the queued jobs."""
        self._jobs.put(None)
        self._thread.join(timeout=60)

    def _work(self) -> None:
        held: _Job | _Resolve | None = None  # a job taken from the queue that starts the next batch
        while True:
            job = held or self._jobs.get()
            held = None
            if job is None:
                return
            if isinstance(job, _Resolve):
                self._resolve(job)
                continue
            jobs, count = [job], len(job.images)
            deadline = time.monotonic() + self.window
            while count < self.batch_size:
                try:  # wait only while an announced request is still on its way
                    wait = deadline - time.monotonic() if self._coming > 0 else 0.0
                    more = self._jobs.get(timeout=wait) if wait > 0 else self._jobs.get_nowait()
                except queue.Empty:
                    if self._coming > 0 and time.monotonic() < deadline:
                        continue
                    break
                if (
                    not isinstance(more, _Job)
                    or more.heatmaps != job.heatmaps
                    or count + len(more.images) > self.batch_size
                ):
                    held = more
                    break
                jobs.append(more)
                count += len(more.images)
            self._run(jobs)

    def _resolve(self, job: _Resolve) -> None:
        try:
            job.future.set_result(self.detector())
        except BaseException as exc:
            job.future.set_exception(exc)

    def _run(self, jobs: list[_Job]) -> None:
        images = [image for job in jobs for image in job.images]
        started = time.perf_counter()
        try:
            found: list[Prediction] = self.detector().predict(images, heatmaps=jobs[0].heatmaps)
            seconds = time.perf_counter() - started
            logger.debug(f"scored {len(images)} image(s) of {len(jobs)} request(s) in {seconds:.4f}s")
        except BaseException as exc:  # every waiting request gets the failure
            for job in jobs:
                job.future.set_exception(exc)
            return
        start = 0
        for job in jobs:
            job.future.set_result(found[start : start + len(job.images)])
            start += len(job.images)
