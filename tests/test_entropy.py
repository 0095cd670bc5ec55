"""Codebook entropy: the estimators, and a measurement through a tiny model and the CLI."""

import argparse
import json
import math

import numpy as np
import pytest
import soundfile as sf

from speechcodec.cli_explain import add_commands
from speechcodec.entropy import (
    WORTHWHILE_SAVING,
    code_counts,
    cross_entropy_bits,
    entropy_bits,
    measure_entropy,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_entropy_of_known_distributions():
    counts = np.zeros((3, 16), dtype=np.int64)
    counts[0] = 5  # uniform over 16 -> 4 bits
    counts[1, 3] = 99  # one code -> 0 bits
    counts[2, :2] = [1, 1]  # a fair coin -> 1 bit
    np.testing.assert_allclose(entropy_bits(counts), [4.0, 0.0, 1.0], atol=1e-12)
    assert math.isnan(entropy_bits(np.zeros((1, 4)))[0])


def test_cross_entropy_is_never_below_entropy():
    rng = np.random.default_rng(0)
    for _ in range(20):
        data = rng.integers(0, 50, size=(2, 64))
        table = rng.integers(0, 50, size=(2, 64))
        assert np.all(cross_entropy_bits(data, table) >= entropy_bits(data) - 1e-9)
    # a table equal to the data costs a little more than the plug-in (smoothing), not less
    d = rng.integers(1, 30, size=(1, 32))
    assert 0 <= cross_entropy_bits(d, d)[0] - entropy_bits(d)[0] < 0.05
    with pytest.raises(ValueError):
        cross_entropy_bits(d, np.ones((1, 8)))


def test_measure_on_tiny_model(tiny_codec, speech):
    cfg = tiny_codec.cfg
    other = 0.7 * speech[::-1].copy()
    cc = code_counts(tiny_codec, [speech])
    assert cc.counts.shape == (cfg.num_codebooks, cfg.codebook_size)
    assert np.all(cc.counts.sum(axis=1) == cc.frames)
    rep = measure_entropy(tiny_codec, [speech, other], table_sources=[speech])
    assert rep.frames == 2 * cc.frames and rep.table_frames == cc.frames
    assert len(rep.codebooks) == cfg.num_codebooks
    for c in rep.codebooks:
        assert 0 <= c.entropy <= c.max_entropy + 1e-9 <= c.bits + 1e-9
        assert c.cross_entropy >= c.entropy - 1e-9
        assert 1 <= c.used <= cfg.codebook_size
    fixed = 3 * cfg.bits_per_code
    assert rep.saving(3, honest=False) == pytest.approx(
        1 - sum(c.entropy for c in rep.codebooks[:3]) / fixed)
    rows = rep.rate_rows([3, 6])
    assert rows[0]["fixed_kbps"] == pytest.approx(cfg.kbps(3))
    assert ("worth" in rep.verdict([3])) == (rep.saving(3) >= WORTHWHILE_SAVING)


def test_entropy_command(tmp_path, tiny_codec, speech, capsys):
    model = tmp_path / "tiny.pt"
    tiny_codec.save_release(model, "tiny-test")
    for n in range(2):
        sf.write(tmp_path / f"a{n}.wav", speech * (0.5 + n), 16000)
    p = argparse.ArgumentParser()
    add_commands(p.add_subparsers())
    args = p.parse_args(["entropy", str(tmp_path / "a0.wav"), str(tmp_path / "a1.wav"),
                         "--table", str(tmp_path / "a0.wav"), "--model", str(model), "--json"])
    assert args.func(args) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["files"] == 2 and len(doc["codebooks"]) == 12
    assert [r["codebooks"] for r in doc["rates"]] == [3, 6, 12]
    assert doc["model"]["model_id"] == "tiny-test"
