"""The command line end to end on a sample, and its behaviour on bad input."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from speechcodec.cli import main

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "samples" / "espeak_male.wav"


def run(argv, capsys):
    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_encode_info_decode_roundtrip(tmp_path, capsys):
    spc, wav = tmp_path / "talk.spc", tmp_path / "talk_out.wav"
    rc, out, _ = run(["encode", SAMPLE, spc, "--kbps", "3", "--json"], capsys)
    assert rc == 0
    enc = json.loads(out)
    assert enc["codebooks"] == 6 and abs(enc["payload_kbps"] - 3.0) / 3.0 < 0.02
    assert enc["file_bytes"] == spc.stat().st_size
    rc, out, _ = run(["info", spc, "--json"], capsys)
    info = json.loads(out)
    assert rc == 0 and info["frames"] == enc["frames"] and info["latency_ms"] <= 40
    rc, out, _ = run(["decode", spc, wav, "--ref", SAMPLE, "--json"], capsys)
    assert rc == 0
    ref, ref_rate = sf.read(SAMPLE)
    dec, rate = sf.read(wav, dtype="int16")
    assert rate == ref_rate == 16000 and len(dec) == len(ref)
    assert sf.info(wav).subtype == "PCM_16"
    assert np.isfinite(json.loads(out)["quality"]["snr_db"])


def test_roundtrip_reports_each_rate(tmp_path, capsys):
    rc, out, _ = run(["roundtrip", SAMPLE, "--kbps", "1.5,3,6", "--fast", "--json",
                      "--out", tmp_path], capsys)
    assert rc == 0
    res = json.loads(out)["results"]
    assert [r["kbps"] for r in res] == [1.5, 3.0, 6.0]
    for r in res:
        assert abs(r["payload_kbps"] - r["kbps"]) / r["kbps"] < 0.02
        assert r["length_out"] == r["length_in"]
        assert Path(r["output"]).exists()


def test_original_rate_output_has_exact_length(tmp_path, capsys):
    x, _ = sf.read(SAMPLE, dtype="float32")
    stereo = np.stack([x[:30001], 0.5 * x[:30001]], axis=1)
    src = tmp_path / "in44.wav"
    sf.write(src, np.repeat(stereo, 1, axis=0), 44100, subtype="PCM_24")
    spc, out = tmp_path / "a.spc", tmp_path / "a.wav"
    assert run(["encode", src, spc], capsys)[0] == 0
    assert run(["decode", spc, out, "--original-rate"], capsys)[0] == 0
    info = sf.info(out)
    assert info.samplerate == 44100 and info.frames == 30001 and info.channels == 1


def _expect_error(argv, capsys, fragment, output=None):
    rc, _, err = run(argv, capsys)
    assert rc == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert fragment in lines[0]
    if output is not None:
        assert not Path(output).exists(), "a failed run left an output file"
        assert not list(Path(output).parent.glob(".*tmp*")), "temporary file left behind"


@pytest.mark.parametrize("kind", ["missing", "directory", "empty", "garbage"])
def test_bad_audio_input(tmp_path, capsys, kind):
    src = tmp_path / "in.wav"
    if kind == "directory":
        src.mkdir()
    elif kind == "empty":
        src.write_bytes(b"")
    elif kind == "garbage":
        src.write_bytes(b"this is not audio at all" * 50)
    out = tmp_path / "out.spc"
    _expect_error(["encode", src, out], capsys, str(src), out)


def test_damaged_stream(tmp_path, capsys):
    spc = tmp_path / "t.spc"
    assert run(["encode", SAMPLE, spc], capsys)[0] == 0
    data = bytearray(spc.read_bytes())
    data[len(data) // 2] ^= 0x10
    bad = tmp_path / "bad.spc"
    bad.write_bytes(bytes(data))
    out = tmp_path / "out.wav"
    _expect_error(["decode", bad, out], capsys, "damaged", out)
    bad.write_bytes(bytes(data[:40]))
    _expect_error(["decode", bad, out], capsys, "truncated", out)
    bad.write_bytes(b"RIFF" + bytes(data[4:]))
    _expect_error(["decode", bad, out], capsys, "magic", out)
    _expect_error(["info", bad], capsys, "magic")


def test_stream_from_another_model_is_refused(tmp_path, capsys, tiny_codec):
    from speechcodec.api import encode_audio
    from speechcodec.audio import load_audio

    tiny_codec.model_id = "someone-else"
    enc = encode_audio(tiny_codec, load_audio(SAMPLE), 3)
    spc = tmp_path / "other.spc"
    spc.write_bytes(enc.data)
    out = tmp_path / "o.wav"
    _expect_error(["decode", spc, out], capsys, "made by model 'someone-else'", out)


def test_no_overwrite_without_force(tmp_path, capsys):
    spc = tmp_path / "t.spc"
    spc.write_bytes(b"keep me")
    _expect_error(["encode", SAMPLE, spc], capsys, "already exists")
    assert spc.read_bytes() == b"keep me"
    assert run(["encode", SAMPLE, spc, "-f"], capsys)[0] == 0
    assert spc.read_bytes()[:4] == b"SPCD"


def test_unsupported_bitrate_and_missing_folder(tmp_path, capsys):
    _expect_error(["encode", SAMPLE, tmp_path / "x.spc", "--kbps", "2.2"], capsys,
                  "unsupported bitrate")
    _expect_error(["encode", SAMPLE, tmp_path / "nope" / "x.spc"], capsys, "does not exist")


def test_console_entry_point_and_module(tmp_path):
    """`python -m speechcodec` works as a real process, errors included."""
    r = subprocess.run([sys.executable, "-m", "speechcodec", "decode", str(tmp_path / "no.spc"),
                        str(tmp_path / "o.wav")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "file not found" in r.stderr
    r = subprocess.run([sys.executable, "-m", "speechcodec", "--version"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0 and "speechcodec" in r.stdout


def test_set_reads_booleans_and_refuses_junk():
    """`--set phase_advance=false` must mean False (bool('false') is True in Python)."""
    from speechcodec.cli import _parse_overrides
    from speechcodec.cliutil import UserError

    assert _parse_overrides(["phase_advance=false"])[0] == {"phase_advance": False}
    assert _parse_overrides(["phase_advance=True"])[0] == {"phase_advance": True}
    assert _parse_overrides(["phase_weight=0.5"])[1] == {"phase_weight": 0.5}
    with pytest.raises(UserError, match="cannot read"):
        _parse_overrides(["phase_advance=maybe"])


def test_train_names_a_fast_params_module_the_model_lacks(tmp_path, capsys):
    rc, _, err = run(["train", "--data", SAMPLE, "--out", tmp_path / "run",
                      "--set", "fast_params=decoder.low.99", "--steps", "1"], capsys)
    assert rc != 0 and "no parameters under 'decoder.low.99'" in err
    assert "Traceback" not in err


def test_eval_postfilter_switch(tmp_path, capsys):
    """`eval --postfilter` scores the model with another strength, leaves the cached shared
    model as it was, records the strength, and refuses one out of range."""
    from speechcodec.pretrained import load_codec

    model = tmp_path / "m.pt"
    load_codec().save_release(model, "copy")
    clip = tmp_path / "clip.wav"
    x, rate = sf.read(SAMPLE, dtype="float32")
    sf.write(clip, x[: rate * 2], rate)
    figures = {}
    for strength in ("0", "0.6"):
        rc, out, _ = run(["eval", clip, "--model", model, "--kbps", "3", "--json",
                          "--postfilter", strength], capsys)
        info = json.loads(out)
        assert rc == 0 and info["postfilter"] == float(strength)
        figures[strength] = info["summary"][0]["mel_distance"]
    assert figures["0"] != figures["0.6"]
    assert load_codec(str(model)).cfg.postfilter == load_codec().cfg.postfilter
    rc, _, err = run(["eval", clip, "--model", model, "--postfilter", "3"], capsys)
    assert rc != 0 and "between 0 and 2" in err
