"""The network subcommands through argparse, the channel benchmark, and the Opus binding."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import soundfile as sf

from speechcodec import opus
from speechcodec.bench_channel import DEFAULT_MANIFEST, format_table, loss_pattern
from speechcodec.bench_channel import main as bench_main
from speechcodec.bench_channel import run as bench_run
from speechcodec.channel import Chain, Delay, FixedPattern, GilbertElliott
from speechcodec.cli_net import add_commands, build_channel, parse_duration, parse_fraction
from speechcodec.cliutil import UserError

pytestmark = pytest.mark.usefixtures("one_thread")


def cli(argv, capsys):
    p = argparse.ArgumentParser()
    add_commands(p.add_subparsers())
    args = p.parse_args([str(a) for a in argv])
    rc = args.func(args)
    return rc, capsys.readouterr().out



def test_simulate_writes_the_input_length_and_reports(model_file, talk, tmp_path, capsys):
    out = tmp_path / "out.wav"
    rc, text = cli(["simulate", talk, out, "--model", model_file, "--kbps", "1.8", "--loss",
                    "20%", "--burst", "2", "--jitter", "30ms", "--playout-delay", "60ms",
                    "--fec", "2", "--fec-depth", "2", "--seed", "1"], capsys)
    assert rc == 0
    for word in ("sent", "lost", "late", "duplicated", "corrupted", "concealed",
                 "recovered by FEC", "payload", "RTP/UDP/IPv4", "latency", "vs clean",
                 "FEC 2 codebooks of each of 2 packets", "14-byte header"):
        assert word in text
    ref, rate = sf.read(talk)
    y, out_rate = sf.read(out)
    assert out_rate == rate and len(y) == len(ref)


def test_simulate_json_and_overwrite(model_file, talk, tmp_path, capsys):
    out = tmp_path / "out.wav"
    argv = ["simulate", talk, out, "--model", model_file, "--kbps", "1.8", "--pattern", "..x",
            "--json"]
    rc, text = cli(argv, capsys)
    d = json.loads(text)
    assert rc == 0 and d["packets_lost"] == d["packets_sent"] // 3
    assert d["output_samples"] == sf.info(talk).frames
    with pytest.raises(UserError, match="exists"):
        cli(argv, capsys)
    rc, _ = cli([*argv, "-f", "--concealment", "none"], capsys)
    assert rc == 0


def test_simulate_restores_the_input_rate(model_file, speech, tmp_path, capsys):
    src = tmp_path / "talk22.wav"
    sf.write(src, np.tile(speech[:11025], 1), 22050)
    out = tmp_path / "out.wav"
    rc, _ = cli(["simulate", src, out, "--model", model_file, "--kbps", "1.8", "--loss", "10%"],
                capsys)
    info = sf.info(out)
    assert rc == 0 and info.samplerate == 22050 and info.frames == 11025


@pytest.mark.parametrize("argv,match", [
    (["--loss", "abc"], "percentage"),
    (["--loss", "150%"], "between"),
    (["--loss", "10"], "percentage"),
    (["--loss", "100%"], "below"),
    (["--jitter", "fast"], "time"),
    (["--loss", "90%", "--burst", "2"], "burst"),
    (["--kbps", "2.75"], "unsupported bitrate"),
    (["--fec", "9"], "--fec"),
    (["--fec-depth", "2"], "needs --fec"),
    (["--fec", "1", "--fec-depth", "5"], "--fec-depth must be in 1..4"),
    (["--frames-per-packet", "0"], "frames-per-packet"),
])
def test_simulate_user_errors(model_file, talk, tmp_path, capsys, argv, match):
    with pytest.raises(UserError, match=match):
        cli(["simulate", talk, tmp_path / "o.wav", "--model", model_file, "--kbps", "1.8",
             *argv], capsys)


def test_parsers():
    assert parse_fraction("10%") == pytest.approx(0.1) and parse_fraction("0.05") == 0.05
    assert parse_duration("30ms") == pytest.approx(0.03)
    assert parse_duration("0.5s") == 0.5 and parse_duration("20") == pytest.approx(0.02)


def test_build_channel():
    p = argparse.ArgumentParser()
    add_commands(p.add_subparsers())
    args = p.parse_args(["relay", "--loss", "10%", "--burst", "3", "--jitter", "20ms"])
    ch = build_channel(args)
    assert isinstance(ch.stages[0], GilbertElliott) and isinstance(ch.stages[-1], Delay)
    args = p.parse_args(["relay", "--pattern", "x..", "--delay", "5ms"])
    ch = build_channel(args)
    assert isinstance(ch, Chain) and isinstance(ch.stages[0], FixedPattern)
    assert [len(ch.process(0.0, b"a")) for _ in range(6)] == [0, 1, 1, 0, 1, 1]
    assert args.listen == "127.0.0.1:5005" and args.to == "127.0.0.1:5004"


def test_receive_refuses_to_overwrite(model_file, tmp_path, capsys):
    out = tmp_path / "exists.wav"
    out.write_bytes(b"x")
    with pytest.raises(UserError, match="exists"):
        cli(["receive", out, "--model", model_file, "--wait", "0.1"], capsys)


# -- Opus and the channel benchmark -----------------------------------------------------------

needs_opus = pytest.mark.skipif(not opus.available(), reason="libopus not installed")


@needs_opus
def test_opus_under_loss_keeps_length_and_loses_the_marked_packets(speech):
    clean = opus.opus_under_loss(speech, 8.0)
    lost = [i % 4 == 1 for i in range(200)]
    hurt = opus.opus_under_loss(speech, 8.0, lost)
    assert len(clean.samples) == len(hurt.samples) == len(speech)
    assert hurt.packets_lost == sum(lost[:hurt.packets]) and clean.packets_lost == 0
    assert 4.0 < clean.payload_kbps < 12.0
    # aligned: the clean decode correlates with the input at lag 0
    c = np.corrcoef(speech, clean.samples)[0, 1]
    assert c > 0.5
    assert np.mean((hurt.samples - speech) ** 2) > np.mean((clean.samples - speech) ** 2)


@needs_opus
def test_opus_inband_fec_path_runs(speech):
    lost = [i % 5 == 2 for i in range(200)]
    r = opus.opus_under_loss(speech, 16.0, lost, inband_fec=True, loss_percent=20)
    assert len(r.samples) == len(speech) and r.packets_lost == sum(lost[:r.packets])


def test_loss_pattern_is_seeded():
    a = loss_pattern(0.1, 2.5, 5000, seed=3)
    assert a == loss_pattern(0.1, 2.5, 5000, seed=3) and a != loss_pattern(0.1, 2.5, 5000, 4)
    assert np.mean(a) == pytest.approx(0.1, abs=0.03)
    assert not any(loss_pattern(0.0, 2.5, 100, 0))


def test_channel_benchmark_on_a_small_clip(tiny_codec, talk):
    result = bench_run([talk], tiny_codec, kbps=1.8, fec=2, losses=(0.0, 0.2), burst=2.0,
                       fec_depth=2)
    s = result["summary"]
    names = ["no concealment", "repeat + fade", "concealment", "concealment + FEC",
             "concealment + 2-deep FEC"]
    assert list(s["conditions"])[:5] == names
    assert ("Opus" in s["conditions"]) == opus.available()
    for name in names:
        c = s["conditions"][name]
        assert len(c["pesq_wb"]) == len(c["stoi"]) == 2
    kbps = [s["conditions"][n]["kbps"] for n in names[2:]]
    assert kbps[0] < kbps[1] < kbps[2]  # each FEC copy costs
    # No loss: every speechcodec row is the clean decode.
    assert len({s["conditions"][n]["stoi"][0] for n in names}) == 1
    table = format_table(s)
    assert "| concealment + FEC |" in table and "20% loss" in table
    assert "| concealment + 2-deep FEC |" in table and "previous 2 frames" in table
    # Without libopus the table says so rather than silently dropping the row.
    assert ("not measured" in table) != opus.available()
    s["conditions"].pop("Opus", None)
    assert "Opus: not measured" in format_table(s)


def test_channel_benchmark_in_worker_processes(model_file, talk):
    from speechcodec.pretrained import load_codec

    kw = dict(kbps=1.8, fec=2, losses=(0.1,), burst=2.0, opus_kbps=6.0)
    codec = load_codec(str(model_file))  # as the workers load it (float16 weights)
    serial = bench_run([talk, talk], codec, **kw)
    parallel = bench_run([talk, talk], codec, jobs=2, model=str(model_file), **kw)
    assert parallel["rows"] == serial["rows"]


@pytest.mark.skipif(not DEFAULT_MANIFEST.exists(), reason="../shared/data is not here")
def test_channel_benchmark_main_on_the_validation_set(model_file, capsys):
    rc = bench_main(["--limit", "1", "--model", str(model_file), "--kbps", "1.8", "--fec", "2",
                     "--losses", "0,10", "--json"])
    assert rc == 0
    s = json.loads(capsys.readouterr().out)
    assert s["files"] == 1 and s["losses"] == [0.0, 0.1]


def test_cli_concealments_match_the_receiver():
    from speechcodec import cli_net, receiver

    assert set(cli_net.CONCEALMENTS) == set(receiver.CONCEALMENTS)


def test_receive_reports_a_busy_port(model_file, tmp_path, capsys):
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        with pytest.raises(UserError, match="cannot listen"):
            cli(["receive", tmp_path / "o.wav", "--model", model_file, "--listen",
                 f"127.0.0.1:{port}", "--wait", "0.1"], capsys)
    assert not (tmp_path / "o.wav").exists()


def test_channel_benchmark_with_plcmos(tiny_codec, talk):
    from speechcodec.bench_channel import plcmos_available

    if not plcmos_available():
        pytest.skip("speechmos / onnxruntime not installed")
    s = bench_run([talk], tiny_codec, kbps=1.8, fec=2, losses=(0.2,), burst=2.0,
                  with_plcmos=True)["summary"]
    m = s["conditions"]["concealment"]["plcmos"]
    assert len(m) == 1 and 0.5 < m[0] < 5.5
    assert "PLCMOS" in format_table(s)
