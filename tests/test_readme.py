"""The README's examples run as written."""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _block_after(heading: str, lang: str = "") -> str:
    start = README.index(heading)
    m = re.compile(r"```" + lang + r"\n(.*?)```", re.S).search(README, start)
    assert m, f"no code block after {heading}"
    return m.group(1)


def test_quickstart_has_exactly_two_commands():
    lines = [ln for ln in _block_after("## Quickstart").splitlines() if ln.strip()]
    assert [ln.split()[0] for ln in lines] == ["scripts/demo", "scripts/test"]
    for ln in lines:
        assert os.access(ROOT / ln.split()[0], os.X_OK)


def test_python_example_runs(tmp_path):
    (tmp_path / "samples").symlink_to(ROOT / "samples")
    code = _block_after("From Python", "python")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "kbps" in r.stdout


def test_cli_examples_run(tmp_path):
    (tmp_path / "samples").symlink_to(ROOT / "samples")
    exe = Path(sys.executable).parent / "speechcodec"
    ran = 0
    for line in _block_after("## Using it").splitlines():
        cmd = line.split("#")[0].strip()
        if not cmd.startswith("speechcodec ") or "../shared" in cmd:
            continue  # the data folder is not next to a temporary directory
        argv = shlex.split(cmd)
        r = subprocess.run([str(exe), *argv[1:]], cwd=tmp_path, capture_output=True, text=True,
                           timeout=300)
        assert r.returncode == 0, f"{cmd}: {r.stderr}"
        ran += 1
    assert ran >= 5
