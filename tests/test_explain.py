"""The explain page, the detached encoder (`embed`) and the PCA commands, on a tiny model."""

import argparse
import json
import math

import numpy as np
import pytest
import soundfile as sf
import torch

from speechcodec.cli_explain import add_commands
from speechcodec.cliutil import UserError
from speechcodec.config import CodecConfig
from speechcodec.explain import embed_file, embed_samples, explain, write_explain
from speechcodec.model import Codec
from speechcodec.pca import fit_pca

pytestmark = pytest.mark.usefixtures("one_thread")


def _run(argv):
    p = argparse.ArgumentParser()
    add_commands(p.add_subparsers())
    args = p.parse_args([str(a) for a in argv])
    return args.func(args)


@pytest.fixture
def codec6():
    """A tiny random model with the real code size (10 bits) but only 6 codebooks (3 kbps), so
    the page has fewer stages to draw."""
    torch.manual_seed(0)
    cfg = CodecConfig(encoder_width=32, encoder_blocks=1, decoder_width=32, decoder_blocks_low=1,
                      decoder_blocks_high=1, latent_dim=16, codebook_size=1024, num_codebooks=6)
    codec = Codec(cfg)
    for layer in codec.quantizer.layers:
        layer.codebook.normal_(0, 0.3)
        layer.initialised.fill_(True)
    return codec.eval()


@pytest.fixture
def files(tmp_path, codec6, speech):
    """A release file of the small model, a PCA basis and two short recordings."""
    model = tmp_path / "tiny.pt"
    codec6.save_release(model, "tiny-test")
    pca = fit_pca([speech, 0.5 * speech[::-1].copy()], num_components=32, frames_per_signal=16)
    basis = tmp_path / "basis.npz"
    pca.save(basis)
    wavs = []
    for n, gain in enumerate((1.0, 0.4)):
        wavs.append(tmp_path / f"talk{n}.wav")
        sf.write(wavs[-1], gain * speech, 16000)
    return {"model": model, "pca": pca, "basis": basis, "wavs": wavs}


@pytest.mark.parametrize("n", [1, 320, 321, 21000])
def test_embed_matches_the_whole_signal_encoder(tiny_codec, speech, n):
    x = speech[:n]
    z = embed_samples(tiny_codec, x)
    frames = math.ceil(n / 320)
    assert z.shape == (frames, tiny_codec.cfg.latent_dim) and z.dtype == np.float32
    padded = np.zeros(frames * 320, dtype=np.float32)
    padded[:n] = x
    ref = tiny_codec.embed(torch.from_numpy(padded)[None])[0].numpy().T
    np.testing.assert_allclose(z, ref, atol=1e-5)


def test_embed_file_and_command(files, codec6, tmp_path, capsys):
    emb = embed_file(files["wavs"][0], codec6)
    assert emb.frame_rate == 50 and emb.frame_size == 320 and emb.num_samples == 21000
    assert emb.latents.shape == (math.ceil(21000 / 320), 16)
    out = tmp_path / "feats.npy"
    assert _run(["embed", files["wavs"][0], out, "--model", files["model"], "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    saved = np.load(out)
    assert list(saved.shape) == info["shape"] and info["frame_rate"] == 50
    released = Codec.from_release_bytes(files["model"].read_bytes())  # float16 weights
    np.testing.assert_allclose(saved, embed_file(files["wavs"][0], released).latents, atol=1e-6)
    assert info["model_id"] == "tiny-test"
    with pytest.raises(UserError, match="already exists"):
        _run(["embed", files["wavs"][0], out, "--model", files["model"]])
    with pytest.raises(UserError, match=r"\.npy"):
        _run(["embed", files["wavs"][0], tmp_path / "feats.txt", "--model", files["model"]])


def test_explain_measures_and_writes_the_page(files, codec6, speech, tmp_path):
    # 6 kbps would need 12 codebooks; the model has 6: left out with a note
    ex = explain(codec6, speech, files["pca"], kbps=(1.5, 3.0, 6.0), name="speech")
    assert any("unsupported bitrate 6" in n for n in ex.notes)
    k = codec6.cfg.num_codebooks
    assert [s.codebooks for s in ex.stages] == list(range(1, k + 1))
    assert all(s.latent_residual >= 0 for s in ex.stages)
    for s in ex.stages + ex.pca_stages:
        assert s.samples.shape == speech.shape
        assert math.isfinite(s.mel_distance)
    assert [p.bits_per_frame for p in ex.pca_stages] == [30, 60]
    assert [ex.stage_for(r).codebooks for r in ex.kbps] == [3, 6]
    assert [r["bits"] for r in ex.bottleneck] == [5120, 32 * 16, 30, 60]
    assert len(ex.usage) == k and all(0 <= u["entropy"] <= u["max_entropy"] for u in ex.usage)

    paths = write_explain(ex, tmp_path / "page", files["pca"])
    page = paths["page"].read_text()
    for title in ("The bottleneck in numbers", "Latents and codes over time",
                  "Codebook usage and entropy", "Adding codebooks one at a time",
                  "A linear autoencoder (PCA) at the same bitrate"):
        assert title in page
    # original + one per stage + neural and PCA at two rates
    assert page.count("<audio") == 1 + k + 4
    assert "5,120" in page or "5120" in page
    for name in ("codes", "usage", "stages", "pca", "rate_quality"):
        assert paths[name].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads(paths["summary"].read_text())
    assert len(summary["stages"]) == k and len(summary["pca"]["stages"]) == 2


def test_explain_command(files, tmp_path, capsys, speech):
    short = tmp_path / "short.wav"
    sf.write(short, speech[:8000], 16000)
    out = tmp_path / "ex"
    argv = ["explain", short, "--out", out, "--model", files["model"], "--pca", files["basis"],
            "--fast", "--kbps", "1.5,3", "--json"]
    assert _run(argv) == 0
    doc = json.loads(capsys.readouterr().out)
    assert (out / "index.html").exists() and doc["page"] == str(out / "index.html")
    assert len(doc["stages"]) == 6 and len(doc["pca"]["stages"]) == 2
    assert json.loads((out / "summary.json").read_text())["name"] == "short.wav"
    with pytest.raises(UserError, match="already exists"):
        _run(argv)
    with pytest.raises(UserError, match="unsupported bitrate"):
        _run([*argv, "-f", "--kbps", "6"])
    with pytest.raises(UserError, match="not found"):
        _run(["explain", short, "--out", out, "-f", "--model", files["model"], "--kbps", "1.5",
              "--pca", tmp_path / "missing.npz"])


def test_pca_fit_and_eval_commands(files, tmp_path, capsys):
    basis = tmp_path / "fitted.npz"
    folder = files["wavs"][0].parent
    assert _run(["pca-fit", folder, "--out", basis, "--components", "24"]) == 0
    assert "30 bits" in capsys.readouterr().out
    with pytest.raises(UserError, match="already exists"):
        _run(["pca-fit", folder, "--out", basis])
    csv = tmp_path / "rows.csv"
    assert _run(["pca-eval", *files["wavs"], "--pca", basis, "--model", files["model"],
                 "--kbps", "1.5,3", "--csv", csv, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [(s["codec"], s["kbps"]) for s in doc["summary"]] == [
        ("neural", 1.5), ("pca", 1.5), ("neural", 3.0), ("pca", 3.0)]
    assert all(s["files"] == 2 for s in doc["summary"])
    assert len(csv.read_text().splitlines()) == 1 + 2 * 2 * 2
    pca = {s["kbps"]: s for s in doc["summary"] if s["codec"] == "pca"}
    assert pca[3.0]["snr_db"] > pca[1.5]["snr_db"]
