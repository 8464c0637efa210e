"""Command line entry point: ``python main.py --mode train|inference|all [--config PLAN]``."""

from __future__ import annotations

import argparse
import logging
import sys
import warnings

from alo.errors import AloError, one_line
from alo.logs import setup_console
from alo.runner import run


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line.

    Args:
        argv: Arguments (defaults to ``sys.argv[1:]``).

    Returns:
        The parsed flags.
    """
    parser = argparse.ArgumentParser(description="Visual anomaly detection pipeline (PatchCore / FastFlow).")
    parser.add_argument(
        "--mode",
        choices=["train", "inference", "all"],
        default="all",
        help="which pipeline(s) to run (default: all = train, then inference)",
    )
    parser.add_argument("--config", default="experimental_plan.yaml", help="the plan file (default: %(default)s)")
    parser.add_argument("--debug", action="store_true", help="show DEBUG messages and tracebacks")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the pipelines and turn failures into one line and an exit code.

    Args:
        argv: Arguments (defaults to ``sys.argv[1:]``).

    Returns:
        The process exit code.
    """
    args = parse_args(argv)
    if not args.debug:
        for category in (FutureWarning, DeprecationWarning):
            warnings.filterwarnings("ignore", category=category)
    setup_console(args.debug)
    log = logging.getLogger("alo.main")
    try:
        run(args.config, args.mode)
    except AloError as exc:
        if args.debug:
            log.exception("run failed")
        print(f"ERROR: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("ERROR: interrupted; the previous artifacts are unchanged", file=sys.stderr)
        return 130
    except Exception as exc:
        if args.debug:
            log.exception("internal error")
        detail = one_line(f"{exc.__class__.__name__}: {exc}")
        print(f"ERROR: internal error {detail} (rerun with --debug for details)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
