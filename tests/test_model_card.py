"""The model card keeps the whole history: the shipped model on top, then every retired model,
newest first, each with a pointer to its file in git that still resolves."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from speechcodec.pretrained import DEFAULT_MODEL, HERE, registry

ROOT = Path(__file__).resolve().parents[1]
CARD = (HERE / "MODEL_CARD.md").read_text()
NAME = re.compile(r"speechcodec-base-v(\d+)")


def _shipped_version() -> int:
    m = NAME.fullmatch(DEFAULT_MODEL)
    assert m, DEFAULT_MODEL
    return int(m.group(1))


def test_card_describes_the_shipped_model_and_its_hash():
    assert CARD.startswith(f"# Model card: {DEFAULT_MODEL}\n")
    sha = registry()[DEFAULT_MODEL]["sha256"]
    top = CARD.split("\n# Earlier model:", 1)[0]
    assert f"`{sha[:16]}...`" in top


def test_card_keeps_every_retired_model_newest_first():
    retired = [int(v) for v in re.findall(r"^# Earlier model: speechcodec-base-v(\d+) \(retired\)$",
                                          CARD, re.M)]
    assert retired == list(range(_shipped_version() - 1, 0, -1))
    # Each retired section is a real record, not a bare heading.
    sections = re.split(r"^# Earlier model: .*$", CARD, flags=re.M)[1:]
    assert all(len(s.splitlines()) >= 20 for s in sections)


def test_card_git_pointers_resolve():
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    shallow = subprocess.run(["git", "rev-parse", "--is-shallow-repository"], cwd=ROOT,
                             capture_output=True, text=True).stdout.strip()
    if shallow == "true":
        pytest.skip("a shallow clone lacks the history")
    pointers = set(re.findall(r"git show ([0-9a-f]{7,40}):(speechcodec/pretrained/\S+?\.pt)", CARD))
    versions = {int(NAME.search(path).group(1)) for _, path in pointers}
    assert versions == set(range(1, _shipped_version()))
    for commit, path in sorted(pointers):
        found = subprocess.run(["git", "cat-file", "-e", f"{commit}:{path}"], cwd=ROOT,
                               capture_output=True)
        assert found.returncode == 0, f"git show {commit}:{path} does not resolve"
