"""Comparison orchestration and the `compare` / `listen` commands, on tiny models and clips."""

from __future__ import annotations

import argparse
import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from speechcodec.audio import load_audio, write_wav
from speechcodec.baselines import select_baselines
from speechcodec.bitstream import StreamError
from speechcodec.cli_compare import add_commands
from speechcodec.cliutil import UserError
from speechcodec.compare import (
    evenly_spread,
    run_comparison,
    score,
    write_demo_page,
    write_outputs,
)
from speechcodec.config import CodecConfig
from speechcodec.model import Codec

ROOT = Path(__file__).resolve().parents[1]
VALID = ROOT.parent / "shared" / "data" / "valid.csv"
RATE = 16000
TINY = CodecConfig(encoder_width=32, encoder_blocks=1, decoder_width=32, decoder_blocks_low=1,
                   decoder_blocks_high=1, latent_dim=16, codebook_size=64, num_codebooks=12)
# 64-entry codebooks: 6 bits x 50 frames/s = 0.3 kbit/s per codebook
TINY_KBPS = (0.9, 1.8)


@pytest.fixture(scope="module")
def tiny() -> Codec:
    torch.manual_seed(0)
    return Codec(TINY).eval()


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> list[Path]:
    """Two 1.2 s clips cut from the samples."""
    folder = tmp_path_factory.mktemp("clips")
    out = []
    for name in ("espeak_male", "flite_slt"):
        x = load_audio(ROOT / "samples" / f"{name}.wav").samples[RATE // 2: RATE // 2 + 19200]
        write_wav(folder / f"{name}.wav", x, RATE)
        out.append(folder / f"{name}.wav")
    return out


def _cheap_baselines() -> list:
    """G.711 and GSM when sox is installed: fast, so the orchestration tests stay quick."""
    return select_baselines(["g711-ulaw", "gsm-fr"])


def run_cli(argv: list[str]) -> int:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers()
    add_commands(sub)
    args = p.parse_args([str(a) for a in argv])
    return args.func(args)


def test_evenly_spread():
    assert evenly_spread(range(10), 3) == [0, 4, 9]
    assert evenly_spread(range(3), 5) == [0, 1, 2]
    assert evenly_spread(range(5), 1) == [2]
    assert evenly_spread(range(5), None) == [0, 1, 2, 3, 4]
    assert evenly_spread([], 2) == []


def test_score_finds_and_undoes_a_delay():
    x = load_audio(ROOT / "samples" / "espeak_male.wav").samples  # silence at both ends
    late = np.concatenate([np.zeros(80, np.float32), x[:-80]])  # 5 ms late
    m = score(x, late)
    assert m["delay_ms"] == pytest.approx(5.0)
    assert m["stoi"] > 0.99 and m["si_sdr_db"] > 40 and m["mel_distance"] < 0.05
    from speechcodec.metrics import si_sdr_db

    assert si_sdr_db(x, late) < 5  # without alignment the same signal scores badly
    assert m["pesq_wb"] > 4.0  # PESQ aligns by itself
    assert score(x, late, max_delay_ms=2.0)["delay_ms"] <= 2.0


def test_run_comparison_rows_summary_and_outputs(tiny, clips, tmp_path):
    cmp = run_comparison(clips, tiny, TINY_KBPS, _cheap_baselines(), listen_files=1,
                         progress=False)
    keys = [c.key for c in cmp.contenders]
    assert keys[:2] == ["speechcodec-0.9", "speechcodec-1.8"]
    assert len(cmp.rows) == len(clips) * len(keys)
    assert all(r["error"] == "" for r in cmp.rows)
    by_key = {s["codec"]: s for s in cmp.summary}
    seconds = 2 * 19200 / RATE
    for k, kbps in zip(keys, TINY_KBPS):
        s = by_key[k]
        assert s["files"] == 2 and s["seconds"] == pytest.approx(seconds)
        frames = -(-(19200 + TINY.output_delay) // TINY.frame_size)
        assert s["payload_bits"] == 2 * frames * round(kbps / 0.3) * 6  # codes x 6 bits
        assert s["compression"] == pytest.approx(256 / s["kbps"])
        assert s["delay_ms"] == s["delay_ms"] and s["encode_s_per_min"] > 0
    if "g711-ulaw" in by_key:
        assert by_key["g711-ulaw"]["kbps"] == pytest.approx(64.0, rel=0.01)
        assert by_key["g711-ulaw"]["stoi"] > 0.95
    assert list(cmp.audio) == [1]  # the middle file of two
    assert set(cmp.audio[1]) == set(keys)

    paths = write_outputs(cmp, tmp_path / "out")
    with open(paths["summary.csv"]) as f:
        rows = list(csv.DictReader(f))
    assert [r["codec"] for r in rows] == keys
    with open(paths["per_file.csv"]) as f:
        assert len(list(csv.DictReader(f))) == len(cmp.rows)
    doc = json.loads(paths["summary.json"].read_text())
    assert doc["files"] == 2 and doc["seconds"] == pytest.approx(seconds)
    assert [s["codec"] for s in doc["summary"]] == keys
    assert paths["rate_quality.png"].read_bytes().startswith(b"\x89PNG")
    page = paths["index.html"].read_text()
    assert page.count("<audio") == 1 + len(keys)  # the original + every reconstruction
    assert "PESQ-WB" in page and "× smaller" in page


def test_parallel_run_matches_serial(tiny, clips):
    kw = dict(kbps=TINY_KBPS[:1], baselines=[], listen_files=0, progress=False)
    serial = run_comparison(clips, tiny, jobs=1, **kw)
    parallel = run_comparison(clips, tiny, jobs=2, **kw)
    for a, b in zip(serial.rows, parallel.rows):
        assert a["payload_bits"] == b["payload_bits"]
        assert a["si_sdr_db"] == pytest.approx(b["si_sdr_db"], abs=1e-3)


def test_unreadable_file_is_reported_not_fatal(tiny, clips, tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF not really")
    cmp = run_comparison([clips[0], bad], tiny, TINY_KBPS[:1], [], listen_files=0,
                         progress=False)
    errors = [r for r in cmp.rows if r["error"]]
    assert len(errors) == 1 and "bad.wav" in errors[0]["error"]
    assert cmp.summary[0]["files"] == 1 and cmp.summary[0]["failed"] == 1


def test_demo_page(clips, tmp_path, monkeypatch):
    import speechcodec.compare as compare

    # the demo runs every installed classical codec; two fast ones stand in for all here
    monkeypatch.setattr(compare, "available_baselines", lambda: (_cheap_baselines(), {}))
    # the demo uses the codec's 1.5/3/6 kbps rates; the tiny model offers 0.3 kbps steps,
    # so build a tiny model whose rates include them (1024 entries = 10 bits)
    cfg = CodecConfig(encoder_width=16, encoder_blocks=1, decoder_width=16, decoder_blocks_low=1,
                      decoder_blocks_high=1, latent_dim=8, codebook_size=1024, num_codebooks=12)
    torch.manual_seed(0)
    codec = Codec(cfg).eval()
    page = write_demo_page(clips[:1], tmp_path / "demo", codec, progress=False)
    text = page.read_text()
    assert page.name == "index.html" and "speechcodec 1.5 kbps" in text
    assert "speechcodec 6 kbps" in text


# --------------------------------------------------------------------------------------------
# The commands
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_release(tiny, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    tiny.save_release(path, "tiny-test")
    return path


def test_compare_command(tiny_release, clips, tmp_path, capsys):
    out = tmp_path / "cmp"
    argv = ["compare", clips[0], "--out", out, "--model", tiny_release, "--kbps", "0.9",
            "--codecs", "g711", "--jobs", "1", "--listen-files", "1"]
    assert run_cli(argv) == 0
    text = capsys.readouterr().out
    assert "speechcodec 0.9 kbps" in text and "listening page:" in text
    assert (out / "index.html").exists() and (out / "summary.csv").exists()
    with pytest.raises(UserError, match="already exists"):
        run_cli(argv)
    assert run_cli([*argv, "-f", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["files"] == 1 and doc["model"]["model_id"] == "tiny-test"


@pytest.mark.parametrize("extra,message", [
    (["--kbps", "1.0"], "unsupported bitrate"),
    (["--codecs", "mp3"], "unknown codec"),
    (["--no-neural", "--codecs", "none"], "nothing to compare"),
    (["--limit", "0"], "--limit"),
])
def test_compare_command_refuses_bad_requests(tiny_release, clips, tmp_path, extra, message):
    with pytest.raises(UserError, match=message):
        run_cli(["compare", clips[0], "--out", tmp_path / "o", "--model", tiny_release, *extra])


def test_compare_command_missing_input(tmp_path, clips):
    with pytest.raises(UserError, match="not found"):
        run_cli(["compare", tmp_path / "nothing.wav", "--out", tmp_path / "o"])
    with pytest.raises(UserError, match="needs input"):
        run_cli(["compare", "--out", tmp_path / "o"])
    with pytest.raises(UserError, match="needs --out"):
        run_cli(["compare", clips[0]])


def test_list_codecs(capsys):
    assert run_cli(["compare", "--list-codecs"]) == 0
    text = capsys.readouterr().out
    assert "opus-6" in text and "amrwb-12.65" in text


def test_listen_command_with_stream_and_wav(tiny_release, clips, tmp_path, capsys):
    from speechcodec.api import encode_audio
    from speechcodec.pretrained import load_codec

    codec = load_codec(str(tiny_release))
    enc = encode_audio(codec, load_audio(clips[0]), 0.9)
    stream = tmp_path / "talk.spc"
    stream.write_bytes(enc.data)
    page = tmp_path / "page.html"
    assert run_cli(["listen", stream, clips[1], "--ref", clips[0], "--model", tiny_release,
                    "--out", page]) == 0
    assert "listening page:" in capsys.readouterr().out
    text = page.read_text()
    assert text.count("<audio") == 3
    kbps = re.search(r"(\d+\.\d\d) kbps · (\d+)× smaller", text)
    assert kbps and float(kbps.group(1)) == pytest.approx(enc.payload_kbps, abs=0.01)
    assert "PESQ-WB" in text and "<table>" in text
    with pytest.raises(UserError, match="already exists"):
        run_cli(["listen", stream, "--model", tiny_release, "--out", page])


def test_listen_refuses_a_stream_from_another_model(tiny_release, clips, tmp_path):
    from speechcodec.api import encode_audio

    torch.manual_seed(1)
    other = Codec(TINY).eval()
    other.model_id, other.weights_hash = "other", "ab" * 8
    stream = tmp_path / "other.spc"
    stream.write_bytes(encode_audio(other, load_audio(clips[0]), 0.9).data)
    with pytest.raises(StreamError, match="made by model 'other'"):
        run_cli(["listen", stream, "--model", tiny_release, "--out", tmp_path / "p.html"])


@pytest.mark.skipif(not VALID.exists(), reason="../shared/data not available")
def test_compare_on_a_validation_file(tmp_path, capsys):
    if select_baselines(["g711"])[0].missing():
        pytest.skip("sox not installed")
    assert run_cli(["compare", VALID, "--limit", "1", "--no-neural", "--codecs", "g711",
                    "--jobs", "1", "--out", tmp_path / "v"]) == 0
    doc = json.loads((tmp_path / "v" / "summary.json").read_text())
    assert doc["files"] == 1 and doc["summary"][0]["files"] == 1


def test_compare_page_in_headless_chromium(tiny, clips, tmp_path):
    from test_report import _chromium, assert_page_is_sound, probe_page

    if _chromium() is None:
        pytest.skip("chromium not installed")
    cmp = run_comparison(clips[:1], tiny, TINY_KBPS[:1], _cheap_baselines(), listen_files=1,
                         progress=False)
    page = write_outputs(cmp, tmp_path / "cmp", embed=False)["index.html"]
    n = 1 + len(cmp.contenders)
    assert_page_is_sound(probe_page(page, tmp_path), n_audio=n, n_images=n + 1)
