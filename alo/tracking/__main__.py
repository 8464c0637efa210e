"""The background logger's command: ``python -m alo.tracking JOB...`` logs the job folders (see :mod:`alo.tracking`)."""

from __future__ import annotations

import sys
from pathlib import Path

from alo.tracking.writer import run_jobs

if __name__ == "__main__":
    sys.exit(run_jobs([Path(arg) for arg in sys.argv[1:]]))
