"""Nothing from a plan, a CSV or an artifact can run code on the machine that reads it."""

from __future__ import annotations

import re

from conftest import ROOT

SOURCES = sorted([*(ROOT / "alo").rglob("*.py"), *(ROOT / "assets").rglob("*.py"), ROOT / "main.py"])
FORBIDDEN = {
    r"\bsubprocess\b": "a shell or child process",
    r"\bos\.(system|popen|exec\w*|spawn\w*)\b": "a shell",
    r"\bshell\s*=\s*True\b": "a shell",
    r"(?<![.\w])(eval|exec|compile)\(": "code from text",
    r"\bpickle\b|\bdill\b|\bjoblib\b": "unpickling",
    r"yaml\.(load|unsafe_load|full_load)\(": "an unsafe YAML loader",
    r"\.extractall\((?![^)]*filter=\"data\")": "archive extraction without the data filter",
}
# The one child process: the page's Train runs ``sys.executable main.py --mode train --config <validated plan copy>``
# (an argument list, no shell), as a person at the console would; its own test below pins that.
# The tracker's background logger: ``sys.executable -m alo.tracking <job folders it wrote>``, after the run.
ALLOWED = {("apps/web/training.py", "a shell or child process"), ("alo/tracking/spawn.py", "a shell or child process")}


def test_framework_and_assets_use_no_shell_pickle_or_unsafe_loader():
    assert len(SOURCES) > 10
    found = []
    for path in SOURCES:
        text = path.read_text(encoding="utf-8")
        for pattern, what in FORBIDDEN.items():
            for match in re.finditer(pattern, text):
                if (path.relative_to(ROOT).as_posix(), what) in ALLOWED:
                    continue
                line = text.count("\n", 0, match.start()) + 1
                found.append(f"{path.relative_to(ROOT)}:{line} {match.group(0)!r} ({what})")
    assert not found, found


def test_the_page_starts_only_main_py_with_our_interpreter_and_no_shell():
    text = (ROOT / "apps/web/training.py").read_text(encoding="utf-8")
    calls = re.findall(r"subprocess\.(\w+)\(", text)
    assert calls == ["Popen"], calls
    assert 'command = [sys.executable, str(MAIN), "--mode", kind, "--config", str(plan)]' in text
    assert 'JobKind = Literal["train", "update"]' in text, "the page starts train runs and updates, nothing else"
    assert "shell" not in text.split("subprocess.Popen(")[1].split(")")[0]


def test_every_torch_load_is_weights_only():
    for path in SOURCES:
        for line in path.read_text(encoding="utf-8").splitlines():
            if "torch.load(" in line:
                assert "weights_only=True" in line, f"{path.relative_to(ROOT)}: {line.strip()}"


def test_the_tracker_starts_only_its_own_module_with_our_interpreter_and_no_shell():
    text = (ROOT / "alo/tracking/spawn.py").read_text(encoding="utf-8")
    assert re.findall(r"subprocess\.(\w+)\(", text) == ["Popen"]
    assert '[sys.executable, "-m", "alo.tracking", *map(str, jobs)]' in text
    assert "shell" not in text.split("subprocess.Popen(")[1].split(")")[0]
