"""FewSound hypernetwork: model, model files, training (resume, DDP), encode --hyper."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import kancodec
from kancodec import hyper, modelfile
from kancodec.cli import optional_values as _optional_values
from kancodec.corpus import crop, val_crops
from kancodec.errors import FormatError, InputError, Interrupted, KanError
from kancodec.fit import time_grid
from kancodec.hyper import HyperConfig, HyperNetwork
from kancodec.inr import KANConfig, make_config
from kancodec.loss import SpectralLoss, fit_loss
from kancodec.train import TrainSettings, checkpoint_path, log_path, train_hyper
from conftest import interrupt_at, rewrite_metadata

TINY_HYPER = HyperConfig(target=KANConfig(n_freqs=4, hidden=(8,), grid=5).to_dict(), window=4096,
                         channels=(4, 8), strides=(8, 8), frame_channels=4, latent=16, theta_hidden=8, hidden=32)
TINY_TRAIN = TrainSettings(steps=12, batch=4, lr=3e-3, loss_window=2048, val_every=6, checkpoint_every=6,
                           val_clips=3, val_pesq=0)


def test_shapes_and_start_near_theta():
    model = HyperNetwork(TINY_HYPER)
    params = model(torch.randn(3, 4096))
    target = TINY_HYPER.inr
    assert {k: tuple(v.shape[1:]) for k, v in params.items()} == target.shapes()
    assert all(v.shape[0] == 3 for v in params.values())
    # FewSound starts at θ plus a small update: every window gets nearly the universal network
    theta = model.unflatten(model.theta.unsqueeze(0))
    assert max(float((params[k] - theta[k]).detach().abs().max()) for k in params) < 0.05


@pytest.mark.parametrize("mode,encoder", [("fewsound", "conv"), ("fewsound", "spectral"), ("hypersound", "conv")])
def test_learns_two_windows(speech, mode, encoder):
    """The whole chain (E, G, H, θ) is trainable: fitting two fixed windows lowers the loss."""
    torch.manual_seed(0)
    config = HyperConfig(**{**TINY_HYPER.to_dict(), "mode": mode, "encoder": encoder})
    model = HyperNetwork(config)
    x = torch.from_numpy(speech[0][0, 20000:28192].reshape(2, 4096).copy())
    x = x / x.abs().amax(1, keepdim=True)
    feats = config.inr.features(time_grid(4096))
    spectral = SpectralLoss(22050)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        y = config.inr.forward(model(x), feats)
        loss = fit_loss(y, x, spectral, 1.0, 0.01)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    y = y.detach()
    spread = float(((y - y.mean(0)).square().mean() / y.square().mean()).sqrt())
    # measured: the loss falls to 0.42-0.48 of its first value in 60 steps for all three ...
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5])
    # ... and the two windows get different networks (spread 0.63-0.70; 0 would mean the
    # input is ignored, ~0.7 unrelated outputs)
    assert spread > 0.3


def test_config_errors():
    with pytest.raises(KanError, match="choose one of: conv, spectral"):
        HyperConfig(encoder="mel")
    with pytest.raises(KanError, match="choose one of: fewsound, hypersound"):
        HyperConfig(mode="x")
    with pytest.raises(KanError, match="choose one of: kan, nerf"):
        HyperConfig(target=make_config("siren").to_dict())


def test_model_file_round_trip_and_damage(tmp_path):
    model = HyperNetwork(TINY_HYPER)
    path = tmp_path / "m.safetensors"
    hyper.save(model, path, {"steps_done": 3})
    loaded, ref = hyper.load(path)
    assert ref.train == {"steps_done": 3} and ref.kind == "hyper" and ref.sha256 == modelfile.file_sha256(path)
    assert loaded.config == TINY_HYPER
    x = torch.randn(2, 4096)
    a, b = model(x), loaded(x)
    # float16 storage: the predictions agree to far less than an 8-bit quantisation step
    assert max(float((a[k] - b[k]).detach().abs().max()) for k in a) < 2e-3
    with pytest.raises(kancodec.OutputError, match="--force"):
        hyper.save(model, path)
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(bytes(data))
    with pytest.raises(FormatError, match="checksum mismatch"):
        hyper.load(bad)
    bad.write_bytes(path.read_bytes()[:200])
    with pytest.raises(FormatError, match="truncated"):
        hyper.load(bad)
    modelfile.save_model(bad, "ae", {}, {"w": torch.zeros(2)}, force=True)
    with pytest.raises(FormatError, match="expected a 'hyper' model"):
        hyper.load(bad)
    bad.write_bytes(rewrite_metadata(path.read_bytes(), lambda m: m.update({"kancodec.version": "9"})))
    with pytest.raises(FormatError, match="version 9 is not supported"):
        hyper.load(bad)
    # the checksum covers the metadata (model files version 2): an edited config is refused
    def retarget(m):
        config = json.loads(m["kancodec.config"])
        config["target"]["grid_range"] = [-2.0, 2.0]
        m["kancodec.config"] = json.dumps(config)
    assert '"kancodec.version":"2"' in path.read_bytes()[:2000].decode(errors="replace")
    bad.write_bytes(rewrite_metadata(path.read_bytes(), retarget, rehash=False))
    with pytest.raises(FormatError, match="checksum mismatch"):
        hyper.load(bad)


def test_lookup_order_and_bundled_checksum(tmp_path, monkeypatch):
    user, bundled = tmp_path / "user", tmp_path / "bundled"
    user.mkdir()
    bundled.mkdir()
    monkeypatch.setattr(modelfile, "user_models_dir", lambda: user)
    monkeypatch.setattr(modelfile, "BUNDLED_DIR", bundled)
    with pytest.raises(InputError, match=f"not found; looked in: {user}.*{bundled}"):
        modelfile.find_model("mine")
    hyper.save(HyperNetwork(TINY_HYPER), bundled / "mine.safetensors")
    assert modelfile.find_model("mine") == bundled / "mine.safetensors"
    hyper.save(HyperNetwork(TINY_HYPER), user / "mine.safetensors")
    assert modelfile.find_model("mine") == user / "mine.safetensors"  # the user's own model comes first
    monkeypatch.setattr(modelfile, "BUNDLED", {"mine.safetensors": "0" * 64})
    with pytest.raises(FormatError, match="SHA-256 does not match the bundled"):
        hyper.load(bundled / "mine.safetensors")


def test_bundled_models_match_recorded_checksums():
    for name, digest in modelfile.BUNDLED.items():
        assert modelfile.file_sha256(modelfile.BUNDLED_DIR / name) == digest, name


def test_train_checkpoint_resume_and_log(corpus, tmp_path):
    out = tmp_path / "a.safetensors"
    events = []
    summary = train_hyper(corpus, out, TINY_HYPER, TINY_TRAIN, device="cpu", compile=False, progress=events.append)
    plan = next(e for e in events if e.stage == "plan").info
    assert plan["split"] == "folder" and plan["skipped"] == 1 and "blip.wav" in plan["skipped_names"][0]
    lines = [json.loads(s) for s in log_path(out).read_text().splitlines()]
    assert [r["step"] for r in lines] == [6, 12] and all(np.isfinite(r["si_snr"]) for r in lines)
    assert not checkpoint_path(out).exists() and summary["steps_done"] == 12
    model, ref = hyper.load(out)
    assert ref.train["val"]["si_snr"] == pytest.approx(summary["val"]["si_snr"])

    # interrupted at step 8: the checkpoint of step 8 survives, and resuming gives the same model
    out2 = tmp_path / "b.safetensors"
    with pytest.raises(Interrupted, match="interrupted at step 8.*--resume"):
        train_hyper(corpus, out2, TINY_HYPER, TINY_TRAIN, device="cpu", compile=False, progress=interrupt_at(8))
    assert checkpoint_path(out2).exists() and not out2.exists()
    with pytest.raises(KanError, match="pass --resume to continue it or --force"):
        train_hyper(corpus, out2, TINY_HYPER, TINY_TRAIN, device="cpu", compile=False)
    with pytest.raises(KanError, match=r"other settings \(lr\)"):
        train_hyper(corpus, out2, TINY_HYPER, TrainSettings(**{**TINY_TRAIN.__dict__, "lr": 1e-3}),
                    device="cpu", compile=False, resume=True)
    train_hyper(corpus, out2, TINY_HYPER, TINY_TRAIN, device="cpu", compile=False, resume=True)
    resumed, _ = hyper.load(out2)
    for k, v in model.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k


def test_crops_pad_short_clips_and_normalise():
    rng = np.random.default_rng(0)
    short = (np.hanning(1000) * 16000).astype(np.int16)
    x = crop(short, 4096, rng)
    assert x.shape == (4096,) and np.abs(x).max() == pytest.approx(1.0) and np.count_nonzero(x) <= 1000
    long = (np.sin(np.arange(10000) / 7) * 8000).astype(np.int16)
    v = val_crops([short, long], 4096, 1)
    assert v.shape == (1, 4096) and np.count_nonzero(v) > 4000  # full-length clips are preferred


def test_train_bad_data(tmp_path, cache):
    with pytest.raises(InputError, match="no .wav, .flac or .ogg"):
        train_hyper(tmp_path, tmp_path / "m.safetensors", TINY_HYPER, TINY_TRAIN, device="cpu")
    with pytest.raises(InputError, match="not a directory"):
        train_hyper(tmp_path / "nope", tmp_path / "m.safetensors", TINY_HYPER, TINY_TRAIN, device="cpu")
    (tmp_path / "x.wav").write_bytes(b"not audio at all")
    with pytest.raises(InputError, match="no usable clip.*x.wav \\(unreadable\\)"):
        train_hyper(tmp_path, tmp_path / "m.safetensors", TINY_HYPER, TINY_TRAIN, device="cpu")


def test_train_ddp_two_processes(corpus, tmp_path):
    """The DistributedDataParallel path with the gloo backend and 2 CPU processes."""
    out = tmp_path / "ddp.safetensors"
    script = (
        "import sys; sys.path.insert(0, %r); from test_hyper import TINY_HYPER, TINY_TRAIN;"
        "from kancodec.train import train_hyper; import dataclasses;"
        "train_hyper(%r, %r, TINY_HYPER, dataclasses.replace(TINY_TRAIN, steps=6), device='cpu', compile=False)"
        % (str(Path(__file__).parent), str(corpus), str(out)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with socket.socket() as sock:  # a free port for the rendezvous (torchrun does not accept 0)
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", port,
                        "--no-python", sys.executable, "-c", script],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    train = hyper.load(out)[1].train
    assert train["world_size"] == 2 and train["steps_done"] == 6


@pytest.fixture()
def tiny_model(tmp_path) -> Path:
    """A tiny FewSound model at 22.05 kHz with 4096-sample windows (untrained: predicts ~θ)."""
    path = tmp_path / "tiny.safetensors"
    hyper.save(HyperNetwork(TINY_HYPER), path)
    return path


def test_encode_hyper_one_shot_and_refine(tiny_model, speech):
    x, sr = speech
    clip = x[:, 20000:32000]
    one = kancodec.encode(clip, sr, hyper=tiny_model, device="cpu")
    assert one.encode["hyper"]["model"] == "tiny.safetensors" and one.encode["settings"]["steps"] == 0
    assert one.encode["hyper"]["sha256"] == modelfile.file_sha256(tiny_model)
    assert one.config == TINY_HYPER.inr and one.audio.chunk == 4096 and one.audio.fit_sr == 22050
    y, rate = kancodec.decode(one)
    assert rate == sr and y.shape == clip.shape and np.isfinite(y).all()
    refined = kancodec.encode(clip, sr, hyper=tiny_model, refine=60, device="cpu", compile=False)
    # refining fits from the prediction: far better than the (untrained) one-shot guess
    assert refined.encode["si_snr_db"] > one.encode["si_snr_db"] + 3


def test_encode_hyper_errors(tiny_model, speech):
    x, sr = speech
    with pytest.raises(KanError, match="^refine needs hyper"):
        kancodec.encode(x[:, :5000], sr, refine=10)
    with pytest.raises(KanError, match="drop the architecture options"):
        kancodec.encode(x[:, :5000], sr, hyper=tiny_model, config=make_config("nerf"))
    with pytest.raises(KanError, match="drop fit_sr/chunk"):
        kancodec.encode(x[:, :5000], sr, hyper=tiny_model, fit_sr=16000)
    with pytest.raises(InputError, match="model 'nope' not found; looked in"):
        kancodec.encode(x[:, :5000], sr, hyper="nope")


def test_cli_hyper_flag_parsing():
    assert _optional_values(["encode", "a.wav", "--hyper"]) == ["encode", "a.wav", "--hyper=fewsound-kan"]
    assert _optional_values(["encode", "--hyper", "a.wav"]) == ["encode", "--hyper=fewsound-kan", "a.wav"]
    assert _optional_values(["encode", "a.wav", "--hyper", "--refine", "3"])[2] == "--hyper=fewsound-kan"
    assert _optional_values(["encode", "a.wav", "--hyper", "m.safetensors"]) == ["encode", "a.wav", "--hyper", "m.safetensors"]


def test_cli_encode_hyper(tiny_model, speech_wav, tmp_path):
    out = tmp_path / "s.kan"
    r = subprocess.run([sys.executable, "-m", "kancodec", "encode", str(speech_wav), "-o", str(out), "--hyper",
                        str(tiny_model), "--refine", "5", "--compile", "no"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    said = " ".join(r.stderr.split())
    assert "predicting 3 of 3 windows at 22050 Hz with tiny.safetensors, then 5 refining steps" in said
    assert "one shot with tiny.safetensors (fewsound, conv encoder) + 5 refining steps" in said
    r = subprocess.run([sys.executable, "-m", "kancodec", "info", str(out)], capture_output=True, text=True)
    assert r.returncode == 0 and "one shot with tiny.safetensors" in " ".join(r.stdout.split())
    r = subprocess.run([sys.executable, "-m", "kancodec", "encode", str(speech_wav), "-o", str(out), "--force",
                        "--hyper", str(tmp_path / "missing.safetensors")], capture_output=True, text=True)
    assert r.returncode == 3 and "not found; looked in" in r.stderr
    r = subprocess.run([sys.executable, "-m", "kancodec", "encode", str(speech_wav), "-o", str(out), "--force",
                        "--hyper", str(tiny_model), "--steps", "5"], capture_output=True, text=True)
    assert r.returncode == 2 and "use --refine N" in r.stderr


def test_bench_hyper_runs(corpus, tiny_model):
    from kancodec.hyperbench import run_hyper_bench

    r = run_hyper_bench(corpus, str(tiny_model), clips=2, refine=20, max_steps=40, device="cpu", compile=False,
                        log=lambda m: None)
    assert r["clips"] == 1  # the tiny corpus holds out one folder's clip
    assert set(r["one_shot"]) == {"si_snr", "snr", "lsd", "pesq"}
    # 20 steps from the untrained prediction and from a random start both improve on the guess
    assert r["refine"]["snr"] > r["one_shot"]["snr"]
    trace = r["random_to_reach"]
    assert trace["max_steps"] == 40 and (trace["steps"] is None or 10 <= trace["steps"] <= 40)
    assert r["encode_10s_seconds"] > 0
