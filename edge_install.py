"""Build the slim edge install: a venv with one runtime's requirements, less what that runtime never loads.

Run it on the edge device with the system Python (standard library only)::

    python3 edge_install.py                          # OpenVINO, into .venv-edge
    python3 edge_install.py --runtime onnxruntime    # ONNX Runtime, the smaller install
    python3 edge_install.py --no-prune               # keep every installed file

After ``pip install`` it removes files the inference pipeline cannot reach: OpenVINO's GPU and NPU plugins and
its frontends for other formats (the pipeline reads OpenVINO IR on the CPU, the local distribution OpenVINO's
documentation lists), and the libraries' own test suites. ``pip uninstall`` still works on a pruned venv.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
REQUIREMENTS = {"openvino": "requirements-edge-openvino.txt", "onnxruntime": "requirements-edge.txt"}

# OpenVINO shared libraries that a CPU runtime reading IR never opens: other devices' plugins, other formats'
# frontends. The CPU plugin, the IR frontend, the AUTO/HETERO plugins and TBB stay.
OPENVINO_UNUSED = re.compile(
    r"libopenvino_(intel_gpu_plugin|intel_npu_plugin|(gguf|jax|onnx|paddle|pytorch|tensorflow|tensorflow_lite)_frontend)\.so"
)
# Packages whose bundled test suites are removed (nothing imports ``<package>.tests`` at run time).
TEST_SUITES = ("numpy", "pandas", "PIL", "pydantic", "redis", "faiss", "openvino", "onnxruntime", "yaml")


def site_packages(venv: Path) -> Path:
    """The venv's ``site-packages`` folder.

    Args:
        venv: The venv folder.

    Returns:
        Its ``lib/pythonX.Y/site-packages``.

    Raises:
        FileNotFoundError: The venv has none.
    """
    found = sorted(venv.glob("lib/python3*/site-packages"))
    if not found:
        msg = f"{venv} has no lib/python3*/site-packages: is it a venv?"
        raise FileNotFoundError(msg)
    return found[0]


def unused_files(packages: Path) -> list[Path]:
    """The files and folders of an installed edge runtime that the inference pipeline never loads.

    Args:
        packages: A ``site-packages`` folder.

    Returns:
        Paths to remove (files and ``tests`` folders).
    """
    unused = [path for path in (packages / "openvino" / "libs").glob("*.so*") if OPENVINO_UNUSED.match(path.name)]
    for package in TEST_SUITES:
        folder = packages / package
        if folder.is_dir():
            unused.extend(path for path in folder.rglob("tests") if path.is_dir())
    return sorted(set(unused))


def folder_bytes(path: Path) -> int:
    """Bytes on disk under a folder (allocated blocks, as ``du`` counts).

    Args:
        path: A folder.

    Returns:
        The total.
    """
    return sum(entry.lstat().st_blocks * 512 for entry in path.rglob("*"))


def prune(venv: Path) -> int:
    """Remove what :func:`unused_files` lists from a venv.

    Args:
        venv: The venv folder.

    Returns:
        Bytes freed on disk.
    """
    packages = site_packages(venv)
    before = folder_bytes(venv)
    for path in unused_files(packages):
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    return before - folder_bytes(venv)


def check(venv: Path, runtime: str) -> None:
    """Import the runtime in the venv and list its CPU device (fails loudly on a broken install).

    Args:
        venv: The venv folder.
        runtime: ``openvino`` or ``onnxruntime``.
    """
    probe = {
        "openvino": "import openvino; assert 'CPU' in openvino.Core().available_devices",
        "onnxruntime": "import onnxruntime; assert 'CPUExecutionProvider' in onnxruntime.get_available_providers()",
    }[runtime]
    probe += "\nimport importlib.util as u; assert u.find_spec('torch') is None, 'torch is installed'"
    subprocess.run([str(venv / "bin" / "python"), "-c", probe], check=True)


def install(venv: Path, runtime: str, pruned: bool = True) -> int:
    """Create the venv, install one runtime's edge requirements, prune, and check.

    Args:
        venv: The venv folder (created; an existing one is added to).
        runtime: ``openvino`` or ``onnxruntime``.
        pruned: Remove the files the pipeline never loads.

    Returns:
        Bytes freed by pruning.
    """
    if not (venv / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "-r", str(ROOT / REQUIREMENTS[runtime])], check=True)
    freed = prune(venv) if pruned else 0
    check(venv, runtime)
    return freed


def main(argv: list[str] | None = None) -> int:
    """Command line: build the edge venv.

    Args:
        argv: Arguments (default: ``sys.argv[1:]``).

    Returns:
        Exit code.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("venv", nargs="?", default=".venv-edge", type=Path, help="venv folder (default .venv-edge)")
    parser.add_argument("--runtime", choices=sorted(REQUIREMENTS), default="openvino")
    parser.add_argument("--no-prune", action="store_true", help="keep every installed file")
    args = parser.parse_args(argv)
    try:
        freed = install(args.venv, args.runtime, not args.no_prune)
    except subprocess.CalledProcessError as exc:
        print(f"edge install failed: {' '.join(map(str, exc.cmd))[:200]} exited {exc.returncode}", file=sys.stderr)
        return 1
    size = folder_bytes(args.venv) / 2**20
    print(f"{args.venv}: {args.runtime} edge install, {size:.0f} MB on disk ({freed / 2**20:.0f} MB pruned)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
