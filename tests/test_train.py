"""The training command on a tiny config: it learns, checkpoints, resumes and exports."""

import csv
from pathlib import Path

import pytest
import torch

from speechcodec.config import TrainConfig
from speechcodec.pretrained import load_codec
from speechcodec.train import export_release, list_audio, train
from tests.conftest import TINY

SAMPLES = Path(__file__).resolve().parents[1] / "samples"


def _tc(steps):
    return TrainConfig(steps=steps, batch_size=2, segment_seconds=0.4, warmup_steps=2,
                       log_every=1, checkpoint_every=2, valid_every=1000, threads=1,
                       mel_windows=(128, 512))


def test_train_resume_export(tmp_path):
    out = tmp_path / "run"
    ckpt = train(str(SAMPLES), str(out), cfg=TINY, tc=_tc(3), progress=False)
    state = torch.load(ckpt, weights_only=False)
    assert state["step"] == 3
    with open(out / "log.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [1, 2, 3]
    assert all(float(r["loss"]) > 0 for r in rows)

    ckpt = train(str(SAMPLES), str(out), resume=True, progress=False,
                 train_overrides={"steps": 5})
    state2 = torch.load(ckpt, weights_only=False)
    assert state2["step"] == 5 and state2["config"] == state["config"]
    assert not torch.equal(state2["model"]["encoder.analysis.weight"],
                           state["model"]["encoder.analysis.weight"])

    path, digest = export_release(ckpt, "tiny-run", tmp_path / "release")
    assert path.stat().st_size < 2_000_000
    codec = load_codec(str(path))
    assert codec.model_id == "tiny-run" and codec.weights_hash == digest[:16]
    assert codec.cfg == TINY
    # The postfilter is set at export, with no change to the weights.
    path, _ = export_release(ckpt, "tiny-pf", tmp_path / "release", postfilter=0.3)
    pf = load_codec(str(path))
    assert pf.cfg.postfilter == 0.3 and pf.decoder.postfilter.strength == 0.3
    for name, value in pf.decoder.state_dict().items():
        assert torch.equal(value, codec.decoder.state_dict()[name]), name
    with pytest.raises(ValueError, match="between 0 and 2"):
        export_release(ckpt, "tiny-bad", tmp_path / "release", postfilter=-1)


def test_schedule_warms_up_then_anneals_to_its_horizon():
    from speechcodec.train import LRSchedule

    sched = LRSchedule(TrainConfig(steps=1000, warmup_steps=100))
    assert sched(0) == pytest.approx(0.01) and sched(99) == pytest.approx(1.0)
    assert sched(100) == pytest.approx(1.0) and sched(550) == pytest.approx(0.55)
    assert sched(1000) == pytest.approx(0.1) and sched(5000) == pytest.approx(0.1)
    sched.fit(300, 550.4)  # a deadline that the run will reach at step 550
    assert sched.horizon == 550 and sched(325) == pytest.approx(0.55)
    assert sched(550) == pytest.approx(0.1)
    sched.fit(300, 9e9)  # never past the run's own steps
    assert sched.horizon == 1000
    sched.fit(700, 650.0)  # the deadline has passed: the floor from the next step
    assert sched.horizon == 701 and sched(701) == pytest.approx(0.1)


def test_a_deadline_ends_the_run_at_the_floor_of_its_schedule(tmp_path):
    """Stopped by `max_minutes` long before its steps, the run still anneals to lr/10."""
    tc = _tc(100_000)
    ckpt = train(str(SAMPLES), str(tmp_path / "run"), cfg=TINY, tc=tc, max_minutes=0.1,
                 progress=False)
    state = torch.load(ckpt, weights_only=False)
    assert 3 <= state["step"] < 100_000
    with open(tmp_path / "run" / "log.csv") as f:
        rows = list(csv.DictReader(f))
    assert int(rows[-1]["step"]) == state["step"]
    assert int(rows[-1]["horizon"]) <= state["step"] + 1
    assert float(rows[-1]["lr"]) == pytest.approx(tc.lr / 10, rel=0.05)
    assert max(float(r["lr"]) for r in rows) == pytest.approx(tc.lr)
    assert state["scheduler"]["lr_lambdas"][0]["horizon"] == state["step"] + 1


def test_loss_decreases_on_a_fixed_batch():
    from speechcodec.model import Codec
    from speechcodec.train import MelLoss, reconstruction_loss

    torch.manual_seed(0)
    codec = Codec(TINY).train()
    tc = _tc(1)
    mel = MelLoss(16000, tc.mel_windows)
    t = torch.arange(6400) / 16000
    wav = (0.3 * torch.sin(2 * torch.pi * 220 * t) * torch.sin(2 * torch.pi * 3 * t))[None]
    opt = torch.optim.Adam(codec.parameters(), 3e-3)
    losses = []
    for _ in range(30):
        loss, _ = reconstruction_loss(codec, TINY.output_delay, mel, wav, torch.tensor([12]), tc)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


def test_list_audio_from_manifest_and_folder(tmp_path):
    files = list_audio(SAMPLES)
    assert len(files) >= 2 and all(f.suffix == ".wav" for f in files)
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,speaker\n" + "".join(f"{f},x\n" for f in files))
    assert list_audio(manifest) == files


def test_data_parallel_replicas_stay_identical(tmp_path):
    """Two processes under torchrun (gloo) end with bit-identical weights, the discriminator's
    included."""
    import json
    import os
    import shutil
    import subprocess
    import sys

    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    assert torchrun, "torchrun is installed with torch"
    overrides = {"encoder_width": 32, "encoder_blocks": 2, "decoder_width": 32,
                 "decoder_blocks_low": 1, "decoder_blocks_high": 1, "latent_dim": 16,
                 "codebook_size": 64, "batch_size": 4, "segment_seconds": 0.4,
                 "warmup_steps": 2, "log_every": 1, "checkpoint_every": 2, "threads": 2,
                 "mel_windows": "128,512", "adv_weight": 0.5, "feat_weight": 1.0,
                 "disc_windows": "128,256", "disc_channels": 4, "disc_batch": 1,
                 "disc_seconds": 0.2, "disc_warmup": 1}
    sets = [a for k, v in overrides.items() for a in ("--set", f"{k}={v}")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", "-m", "speechcodec",
                        "train", "--data", str(SAMPLES), "--out", str(tmp_path / "ddp"),
                        "--steps", "3", "--max-minutes", "30", *sets],
                       capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    sums = json.loads((tmp_path / "ddp" / "replicas.json").read_text())["checksums"]
    assert len(sums) == 2 and sums[0] == sums[1] and len(sums[0].split()) == 2
    state = torch.load(tmp_path / "ddp" / "checkpoint.pt", weights_only=False)
    assert state["step"] == 3 and state["adversary"]["steps"] == 3


def test_augmentation_keeps_length_and_level_and_band_limits():
    """Telephone band-limiting removes energy above 4 kHz; no segment ever exceeds 0.99."""
    import numpy as np

    from speechcodec.train import CropSampler

    rng = np.random.default_rng(0)
    clips = [rng.uniform(-1, 1, 16000).astype(np.float32) for _ in range(4)]
    plain = CropSampler(clips, 8000, (0.0, 0.0), seed=1)
    phone = CropSampler(clips, 8000, (0.0, 0.0), seed=1, bandlimit_prob=1.0)
    eq = CropSampler(clips, 8000, (0.0, 0.0), seed=1, eq_prob=1.0, eq_db=12.0)
    for sampler in (plain, phone, eq):
        b = sampler.batch(4)
        assert b.shape == (4, 8000) and float(b.abs().max()) <= 0.99 + 1e-6
        assert float(b.abs().max()) > 0.5  # peak-normalised, not silenced

    def high_band_share(x):
        spec = np.abs(np.fft.rfft(x.numpy(), axis=1)) ** 2
        return spec[:, 8000 * 4500 // 16000:].sum() / spec.sum()

    assert high_band_share(phone.batch(4)) < 0.01 < high_band_share(plain.batch(4))


def test_stft_loss_is_zero_only_for_equal_spectra():
    from speechcodec.train import STFTLoss

    loss = STFTLoss((512, 1024))
    x = torch.randn(2, 8000) * 0.1
    assert float(loss(x, x)) == 0.0
    assert float(loss(x, 0.5 * x)) == pytest.approx(torch.log10(torch.tensor(2.0)).item(),
                                                     rel=0.05)


def test_warm_start_keeps_encoder_and_decoder_under_a_new_quantizer(tmp_path):
    """`--init` from a model with other codebooks copies encoder and decoder and starts the
    quantizer fresh; a different encoder is refused."""
    import dataclasses

    from speechcodec.model import Codec
    from speechcodec.train import _warm_start

    torch.manual_seed(0)
    src = Codec(TINY)
    path = tmp_path / "src.pt"
    src.save_release(path, "src")
    other_q = Codec(dataclasses.replace(TINY, codebook_dim=4, codebook_size=32))
    _warm_start(other_q, str(path))
    released = load_codec(str(path)).state_dict()  # as stored: float16, or 8 bits per weight
    for name in ("encoder.analysis.weight", "decoder.head.proj.weight", "decoder.low.0.pw1.bias"):
        assert torch.equal(other_q.state_dict()[name], released[name])
    assert other_q.quantizer.layers[0].codebook.shape == (32, 4)
    wider = Codec(dataclasses.replace(TINY, encoder_width=48))
    with pytest.raises(ValueError, match="different encoder/decoder"):
        _warm_start(wider, str(path))


def test_level_loss_measures_frame_level_in_log10_units():
    from speechcodec.train import level_loss

    x = torch.randn(2, 3200) * 0.1
    assert float(level_loss(x, x)) == 0.0
    # 10x quieter everywhere: one log10 unit (20 dB) in every frame
    assert float(level_loss(x, 0.1 * x)) == pytest.approx(1.0, rel=1e-4)
    # Digital silence against silence costs nothing; -80 dBFS is the floor
    z = torch.zeros(1, 3200)
    assert float(level_loss(z, z)) == 0.0


def test_warm_start_from_a_release_keeps_its_codebooks_and_sound(tmp_path):
    """A release holds no EMA statistics; warm-starting from it must still copy the codebooks
    (it once restarted the quantizer from scratch), and a head that gains phase-advance rows
    starts with them at zero, a new harmonic path starts silent, and extra decoder blocks start
    as identities, so the new model first decodes exactly like its source."""
    import dataclasses

    from speechcodec.model import Codec
    from speechcodec.train import _warm_start

    torch.manual_seed(0)
    src = Codec(TINY)
    path = tmp_path / "src.pt"
    src.save_release(path, "src")
    src = load_codec(str(path))
    x = torch.randn(1, 320 * 8) * 0.1
    for cfg in (TINY, dataclasses.replace(TINY, phase_advance=True),
                dataclasses.replace(TINY, harmonic=True),
                dataclasses.replace(TINY, decoder_blocks_low=TINY.decoder_blocks_low + 1,
                                    decoder_blocks_high=TINY.decoder_blocks_high + 2)):
        codec = Codec(cfg)
        _warm_start(codec, str(path))
        codec.eval()
        assert all(bool(layer.initialised) for layer in codec.quantizer.layers)
        assert torch.equal(codec.encode(x, 12), src.encode(x, 12))
        torch.testing.assert_close(codec.decode(src.encode(x, 12)), src.decode(src.encode(x, 12)))
    # The grown blocks learn from the first step: their output layers get a gradient (a zero
    # layer scale, tried first, zeroed it and the blocks stayed shut).
    codec.train()
    codec.decoder(codec.quantizer.decode(src.encode(x, 12))).pow(2).mean().backward()
    for stage, n in (("low", TINY.decoder_blocks_low), ("high", TINY.decoder_blocks_high)):
        grown = getattr(codec.decoder, stage)[n]
        assert torch.count_nonzero(grown.pw2.weight) == 0
        assert grown.pw2.weight.grad.abs().max() > 0


def test_phase_loss_sees_phase_that_magnitude_losses_miss():
    """Frames with the right magnitudes but scrambled phases cost a lot; equal signals cost
    (almost) nothing, a small delay little."""
    from speechcodec.train import PhaseLoss

    torch.manual_seed(0)
    t = torch.arange(16000) / 16000
    f0 = 140 + 20 * torch.sin(2 * torch.pi * 2 * t)
    phase = 2 * torch.pi * torch.cumsum(f0, 0) / 16000
    x = sum(torch.sin(k * phase) / k for k in range(1, 30))[None] * 0.1
    spec = torch.stft(x, 480, 160, window=torch.hann_window(480), return_complex=True)
    noise_phase = torch.rand(spec.shape) * 2 * torch.pi
    scrambled = torch.istft(torch.polar(spec.abs(), noise_phase), 480, 160,
                            window=torch.hann_window(480), length=x.shape[1])
    loss = PhaseLoss(512)
    assert float(loss(x, x)) < 0.005  # only the floor for near-silent bins
    assert float(loss(x, scrambled)) > 0.5
    assert float(loss(x, torch.roll(x, 8, 1))) < 0.05


def test_loudness_loss_hears_what_pesq_hears():
    """No cost for equal signals or for level changes too small to hear, the same cost at any
    joint level, and energy added to the valleys between harmonics costs more than the same
    energy taken away."""
    from speechcodec.train import LoudnessLoss, STFTLoss

    torch.manual_seed(0)
    t = torch.arange(16000) / 16000
    phase = 2 * torch.pi * 150 * t
    x = (sum(torch.sin(k * phase) / k for k in range(1, 40)) * 0.05)[None]
    noise = 0.003 * torch.randn_like(x)
    loss = LoudnessLoss(16000)
    assert float(loss(x, x)) < 1e-5
    assert float(loss(x, 1.06 * x)) < 1e-5  # 0.5 dB: inside the dead zone
    assert float(STFTLoss((512,))(x, 1.06 * x)) > 0.02  # which an L1 loss does charge
    assert float(loss(x, 2 * x)) > 0.1
    assert float(loss(10 * x, 10 * (x + noise))) == pytest.approx(float(loss(x, x + noise)),
                                                                  rel=1e-4)
    assert float(loss(x, x + noise)) > 1.5 * float(loss(x + noise, x))
    est = torch.zeros_like(x, requires_grad=True)
    loss(x, est).backward()
    assert torch.isfinite(est.grad).all()


def test_loudness_weight_adds_the_term_to_the_training_loss():
    from speechcodec.model import Codec
    from speechcodec.train import LoudnessLoss, MelLoss, reconstruction_loss

    torch.manual_seed(0)
    codec = Codec(TINY).eval()  # no codebook updates between the two calls
    wav = 0.1 * torch.randn(2, 6400)
    mel = MelLoss(16000, (128, 512))
    args = (codec, TINY.output_delay, mel, wav, torch.tensor([12, 12]))
    off, parts_off = reconstruction_loss(*args, TrainConfig(),
                                         loudness_loss=LoudnessLoss(16000))
    on, parts = reconstruction_loss(*args, TrainConfig(loudness_weight=0.02),
                                    loudness_loss=LoudnessLoss(16000))
    assert "loudness" not in parts_off and parts["loudness"] > 0
    assert (on - off).item() == pytest.approx(0.02 * parts["loudness"], rel=1e-3)


def test_intelligibility_loss_tracks_stoi():
    """One minus the score is zero for equal signals, blind to the output's gain, finite on a
    silent output, and the score falls with the noise the way STOI's does (within 0.06 of
    `pystoi` on speech at 20, 5 and 0 dB SNR)."""
    pystoi = pytest.importorskip("pystoi")
    from speechcodec.audio import load_audio
    from speechcodec.train import IntelligibilityLoss

    loss = IntelligibilityLoss(16000)
    x = torch.from_numpy(load_audio(SAMPLES / "flite_slt.wav", 16000).samples)[None]
    assert float(loss(x, x)) < 1e-5
    torch.manual_seed(0)
    noisy = x + 0.01 * torch.randn_like(x)
    assert float(loss(x, 3 * noisy)) == pytest.approx(float(loss(x, noisy)), rel=1e-4)
    scores = []
    for snr in (20, 5, 0):
        n = torch.randn_like(x)
        y = x + n * (x.pow(2).mean() / n.pow(2).mean() / 10 ** (snr / 10)).sqrt()
        ours = float(loss.score(x, y)[0])
        ref = pystoi.stoi(x[0].numpy(), y[0].numpy(), 16000, extended=False)
        assert ours == pytest.approx(ref, abs=0.06)
        scores.append(ours)
    assert scores[0] > scores[1] > scores[2]
    est = torch.zeros_like(x, requires_grad=True)
    loss(x, est).backward()
    assert torch.isfinite(est.grad).all()


def test_intelligibility_weight_adds_the_term_to_the_training_loss():
    from speechcodec.model import Codec
    from speechcodec.train import IntelligibilityLoss, MelLoss, reconstruction_loss

    torch.manual_seed(0)
    codec = Codec(TINY).eval()
    wav = 0.1 * torch.randn(2, 9600)
    args = (codec, TINY.output_delay, MelLoss(16000, (128, 512)), wav, torch.tensor([12, 12]))
    intel = IntelligibilityLoss(16000)
    off, parts_off = reconstruction_loss(*args, TrainConfig(), intelligibility_loss=intel)
    on, parts = reconstruction_loss(*args, TrainConfig(intelligibility_weight=0.5),
                                    intelligibility_loss=intel)
    assert "intelligibility" not in parts_off and parts["intelligibility"] > 0
    assert (on - off).item() == pytest.approx(0.5 * parts["intelligibility"], rel=1e-3)


def test_split_holds_out_whole_speakers_reproducibly(tmp_path):
    from speechcodec.train import split_by_speaker

    files = list_audio(SAMPLES)
    manifest = tmp_path / "m.csv"
    rows = [(f, f"spk{i % 5}") for i in range(20) for f in files[:1]]
    manifest.write_text("path,speaker\n" + "".join(f"{f},{s}\n" for f, s in rows))
    train_csv, dev_csv, dev = split_by_speaker(manifest, 2, 1, tmp_path / "a")
    assert len(dev) == 2
    with open(train_csv) as f:
        train_rows = list(csv.DictReader(f))
    with open(dev_csv) as f:
        dev_rows = list(csv.DictReader(f))
    assert len(train_rows) + len(dev_rows) == 20
    assert {r["speaker"] for r in dev_rows} == set(dev)
    assert not {r["speaker"] for r in train_rows} & set(dev)
    assert all(Path(r["path"]).is_absolute() and Path(r["path"]).exists() for r in dev_rows)
    assert split_by_speaker(manifest, 2, 1, tmp_path / "b")[2] == dev  # same seed, same split
    with pytest.raises(ValueError, match="cannot hold out"):
        split_by_speaker(manifest, 5, 1, tmp_path / "c")


def test_adversarial_training_logs_checkpoints_and_resumes(tmp_path):
    """With adv_weight > 0 the discriminator learns alone during its warm-up, then the generator
    gets the adversarial and feature-matching terms; the discriminator and its optimiser are
    saved in the checkpoint and picked up again by --resume."""
    import dataclasses

    out = tmp_path / "gan"
    tc = dataclasses.replace(_tc(3), adv_weight=0.5, feat_weight=1.0, disc_windows=(128, 256),
                             disc_channels=4, disc_batch=2, disc_seconds=0.2, disc_warmup=2)
    train(str(SAMPLES), str(out), cfg=TINY, tc=tc, progress=False)
    with open(out / "log.csv") as f:
        rows = list(csv.DictReader(f))
    assert all(float(r["disc"]) > 0 for r in rows)
    # No generator terms while the discriminator warms up; both from step 3 on.
    assert [r["adv"] for r in rows[:2]] == ["", ""]
    assert float(rows[2]["adv"]) > 0 and float(rows[2]["feat"]) > 0
    state = torch.load(out / "checkpoint.pt", weights_only=False)
    disc = state["adversary"]
    assert disc["steps"] == 3 and disc["optimizer"]["state"]

    train(str(SAMPLES), str(out), resume=True, progress=False, train_overrides={"steps": 4})
    state2 = torch.load(out / "checkpoint.pt", weights_only=False)
    assert state2["adversary"]["steps"] == 4
    moved = [not torch.equal(state2["adversary"]["model"][k], v)
             for k, v in disc["model"].items()]
    assert any(moved)


def test_discriminator_losses():
    from speechcodec.discriminator import (
        MultiSTFTDiscriminator,
        discriminator_loss,
        feature_matching_loss,
        generator_loss,
    )

    torch.manual_seed(0)
    disc = MultiSTFTDiscriminator((128, 256), channels=4)
    x = torch.randn(2, 3200)
    out = disc(x)
    assert len(out) == 2
    for (logits, feats), w in zip(out, (128, 256)):
        frames, bins = 3200 // (w // 4) + 1, w // 2 + 1
        assert logits.shape[:3] == (2, 1, frames) and len(feats) == 5
        assert feats[0].shape[-1] == bins  # the first layer keeps full frequency resolution
    # Hinge: zero once real logits sit at or above +1 and generated ones at or below -1.
    real = [(torch.full((2, 1, 4, 4), 1.5), []), (torch.ones(2, 1, 4, 4), [])]
    fake = [(torch.full((2, 1, 4, 4), -1.0), []), (torch.full((2, 1, 4, 4), -2.0), [])]
    assert discriminator_loss(real, fake).item() == 0.0
    assert discriminator_loss(fake, real).item() > 2.0
    assert generator_loss(real).item() == 0.0
    assert generator_loss(fake).item() == pytest.approx((2.0 + 3.0) / 2)
    # Feature matching: zero for the same audio, positive for different audio.
    assert feature_matching_loss(out, out).item() == 0.0
    assert feature_matching_loss(out, disc(x * 0.5)).item() > 0.1


def test_harmonic_path_trains_its_pitch_from_tracked_targets(tmp_path):
    """With the harmonic path, the pitch error against the tracker joins the loss (and the log),
    and a few steps on a voiced sample bring it down; in a run the path's gate waits at zero
    for its warm-up."""
    import dataclasses

    from speechcodec.model import Codec
    from speechcodec.train import MelLoss, pitch_targets, reconstruction_loss

    torch.manual_seed(0)
    codec = Codec(dataclasses.replace(TINY, harmonic=True)).train()
    t = torch.arange(16000) / 16000
    phase = 2 * torch.pi * torch.cumsum(140 + 40 * t, 0) / 16000
    wav = 0.2 * sum(torch.sin(k * phase) / k for k in range(1, 15))[None].repeat(2, 1)
    target, voiced = pitch_targets(wav, 100, codec)
    assert voiced[:, 5:].all() and not voiced[:, 0].any()  # the first frames precede the input
    assert torch.allclose(target[:, 50], torch.tensor(140 + 40 * (50 * 160 - 80) / 16000),
                          rtol=0.01)
    tc = TrainConfig(mel_windows=(128, 512), stft_weight=0.0, pitch_weight=10.0)
    opt = torch.optim.Adam(codec.parameters(), lr=3e-3)
    mel = MelLoss(16000, tc.mel_windows)
    errors = []
    for _ in range(30):
        loss, parts = reconstruction_loss(codec, codec.cfg.output_delay, mel, wav,
                                          torch.tensor([12, 12]), tc)
        opt.zero_grad()
        loss.backward()
        opt.step()
        errors.append(parts["pitch"])
    assert errors[-1] < 0.5 * errors[0]

    # In a run, the new path stays silent through its warm-up, then its gate is switched on.
    cfg = dataclasses.replace(TINY, harmonic=True)
    for warmup, gate in ((500, 0.0), (1, 0.7)):
        log = tmp_path / f"run{warmup}"
        tc = dataclasses.replace(_tc(3), harmonic_warmup=warmup, harmonic_gate=0.7)
        ckpt = train(str(SAMPLES), str(log), cfg=cfg, tc=tc, progress=False)
        with open(log / "log.csv") as f:
            rows = list(csv.DictReader(f))
        assert len(rows) == 3 and all(float(r["pitch"]) >= 0 for r in rows)
        trained = torch.load(ckpt, weights_only=False)["model"]["decoder.harmonic.gate"]
        assert torch.allclose(trained, torch.full_like(trained, gate), atol=0.01)
        assert bool(trained.any()) == bool(gate)


def test_fast_params_learn_at_their_own_rate_and_must_exist():
    from speechcodec.cli import _parse_overrides
    from speechcodec.model import Codec
    from speechcodec.train import LRSchedule, param_groups

    _, kw = _parse_overrides(["fast_params=decoder.low.0,decoder.high.0", "fast_lr_mult=3",
                              "lr=2e-4"])
    tc = TrainConfig(**kw)
    assert tc.fast_params == ("decoder.low.0", "decoder.high.0")
    assert TrainConfig.from_dict(tc.to_dict()) == tc  # as saved in a checkpoint (JSON lists)
    codec = Codec(TINY)
    groups = param_groups(codec, tc)
    names = {id(p): n for n, p in codec.named_parameters()}
    for g in groups:  # every parameter once, at its rate, vectors never decayed
        for p in g["params"]:
            is_fast = names[id(p)].startswith(("decoder.low.0.", "decoder.high.0."))
            assert g["lr"] == pytest.approx(tc.lr * (3 if is_fast else 1))
            assert g["weight_decay"] == (tc.weight_decay if p.ndim > 1 else 0.0)
    assert sorted(id(p) for g in groups for p in g["params"]) == sorted(names)
    assert any(n.endswith("gamma") for n in names.values())
    opt = torch.optim.AdamW(groups, lr=tc.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, LRSchedule(tc))
    for _ in range(3):
        opt.step()
        sched.step()
    lrs = sched.get_last_lr()
    assert max(lrs) == pytest.approx(3 * min(lrs)) and min(lrs) < 2e-4
    assert len(param_groups(codec, TrainConfig())) == 2
    with pytest.raises(ValueError, match=r"no parameters under 'decoder\.low\.5'"):
        param_groups(codec, TrainConfig(fast_params=("decoder.low.5",)))
