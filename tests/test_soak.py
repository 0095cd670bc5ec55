"""scripts/soak for a few seconds: send -> relay -> receive over UDP on 127.0.0.1 with bursty
loss, jitter, junk datagrams from the peer's address and from a stranger, and a key."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_short_soak(tmp_path):
    r = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "soak.py"), "--minutes", "0.15", "--garbage",
         "10%", "--fec-depth", "2", "--out", str(tmp_path), "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=200)
    text = r.stdout
    assert r.returncode == 0, text[-4000:] + r.stderr[-2000:]
    summary = json.loads(text[text.index("\n{") + 1:])
    assert summary["passed"] and summary["exit_codes"] == {"sender": 0, "relay": 0,
                                                           "receiver": 0}
    assert summary["output_samples"] == summary["input_samples"] == 9 * 16000
    st = summary["receiver"]["stats"]
    assert summary["receiver"]["stopped_by"] == "end" and summary["authenticated"]
    assert summary["relay"]["packets_dropped"] > 0 and st["frames_concealed"] > 0
    junk = sum(summary["relay"]["garbage_sent"].values())
    assert junk > 0 and st["packets_used"] <= summary["sender"]["packets_sent"]
    assert summary["rss"]["samples"] > 5
    assert summary["receiver"]["fec_depth"] == 2 and summary["receiver"]["rates"]["fec_kbps"] == 3
    for word in ("refused", "wrong peer", "memory       receiver RSS start", "result       PASS"):
        assert word in text
