"""The benchmarks' shared harness: one copy of what every benchmark does besides its own measurement.

- :mod:`~benchmarks.harness.paths`: the repository, its ``results/`` folder and ``BENCHMARKS.md``.
- :mod:`~benchmarks.harness.measure`: processes timed from the parent (median of repeats, error tails), peak and
  current resident sets, percentiles.
- :mod:`~benchmarks.harness.workers`: a benchmark's worker in a fresh process, its row handed back as JSON.
- :mod:`~benchmarks.harness.data`: generated product images (reused while their stamp matches), hard-linked
  image folders.
- :mod:`~benchmarks.harness.plans`: the bundled plan as a dict, edited and saved the way every benchmark runs it.
- :mod:`~benchmarks.harness.plain_anomalib`: plain anomalib set up alike on every side (CPU engine, ``Folder``
  data, raw scores).
- :mod:`~benchmarks.harness.rows`: rows appended to ``results/*.jsonl`` as they finish.
- :mod:`~benchmarks.harness.report`: number formatting, the ``Command:`` line, the ``--section`` and
  ``--benchmarks-file`` options, and one section of ``BENCHMARKS.md`` rewritten without touching the others.
"""
