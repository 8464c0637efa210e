"""Command line entry point: ``python main.py --mode train|inference|all|serve|export|tune|update [--config PLAN]``.

``--mode update`` improves the active model from the page's verdicts as a new version; ``--mode rollback --version
N`` makes a kept version active again (:mod:`apps.update_command`).

``--mode inference --loop [--system SOLUTION_METADATA]`` keeps the inference pipeline resident and serves
requests from Redis (ALO's edge protocol, :mod:`alo.loop`).
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings

from alo.errors import AloError, one_line
from alo.logs import setup_console
from alo.runner import run

SOLUTION = "assets"  # the package of the pipeline steps
REPORTER = "apps.mlflow.tracking_report"  # the tracking plugin: what a run reports, and its MLflow model


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
        choices=["train", "inference", "all", "serve", "export", "tune", "update", "rollback"],
        default="all",
        help="which pipeline(s) to run (default: all = train, then inference), serve: the HTTP scoring API, "
        "export: export the trained model (ONNX, with its parity gate), tune: search the plan's tuning: space, "
        "update: improve the model from the Review tab's verdicts (a new model version), rollback: make the "
        "model version --version active again",
    )
    parser.add_argument("--version", type=int, help="rollback: the model version to make active")
    parser.add_argument("--config", default="experimental_plan.yaml", help="the plan file (default: %(default)s)")
    parser.add_argument("--debug", action="store_true", help="show DEBUG messages and tracebacks")
    parser.add_argument(
        "--loop", action="store_true", help="with --mode inference: stay resident and serve requests from Redis"
    )
    parser.add_argument(
        "--system", help="ALO solution metadata for --loop: a YAML/JSON file or a JSON text (Redis address, paths)"
    )
    parser.add_argument("--host", default="127.0.0.1", help="serve: address to bind (default: %(default)s)")
    parser.add_argument("--port", type=int, default=8080, help="serve: port (default: %(default)s)")
    parser.add_argument("--data-root", help="serve: folder JSON paths must stay inside (default: the inference data)")
    parser.add_argument("--max-upload-mb", type=float, default=64.0, help="serve: largest request body in MB")
    args = parser.parse_args(argv)
    if args.loop and args.mode != "inference":
        parser.error("--loop runs the inference pipeline: use it with --mode inference")
    if args.system and not args.loop:
        parser.error("--system is read by the loop: add --loop")
    if (args.mode == "rollback") != (args.version is not None):
        parser.error("--mode rollback needs --version N (model_versions/versions.json lists them), and only it")
    return args


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
        if args.loop:
            from alo.loop import run_loop

            run_loop(args.config, args.system, SOLUTION, REPORTER)
        elif args.mode == "serve":
            from apps.server import serve

            serve(args.config, args.host, args.port, args.data_root, args.max_upload_mb)
        elif args.mode == "export":
            from apps.export_command import run_export

            run_export(args.config)
        elif args.mode == "update":
            from apps.update_command import run_update

            run_update(args.config, SOLUTION, REPORTER)
        elif args.mode == "rollback":
            from apps.update_command import run_rollback

            run_rollback(args.config, args.version)
        elif args.mode == "tune":
            from vad.tuning.study import run_tune

            run_tune(args.config)
        else:
            run(args.config, args.mode, SOLUTION, REPORTER)
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
