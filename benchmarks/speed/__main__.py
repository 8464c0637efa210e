"""``python -m benchmarks.speed``: see :mod:`benchmarks.speed`."""

from benchmarks.speed.cli import main

if __name__ == "__main__":
    main()
