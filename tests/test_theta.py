"""The learned start θ (kancodec.theta, train-theta, encode --start)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from kancodec import api, fitqueue, modelfile, theta
from kancodec.kanfile import codec_for
from kancodec.inr import KANConfig
from kancodec.train import TrainSettings, _ThetaTask, train_theta

from conftest import assert_one_line_error, cli

TINY_T = KANConfig(n_freqs=4, hidden=(8,), grid=5)
TINY_THETA = theta.ThetaConfig(target=TINY_T.to_dict(), window=2048, sample_rate=22050, inner_steps=3)
TINY_META = TrainSettings(steps=4, batch=2, lr=0.5, weight_decay=0.0, loss_window=1024, spectral_weight=0.3,
                          val_every=2, checkpoint_every=2, val_clips=2, val_pesq=0)


def test_reptile_step_moves_theta_towards_the_fitted_networks():
    """One meta-step is θ + ε (mean φ − θ), whatever the networks were fitted to."""
    task = _ThetaTask(TINY_THETA, TINY_META, torch.device("cpu"), False)
    before = task.model.params(1)
    fitted = {k: v.expand(3, *v.shape[1:]) + torch.randn(3, *v.shape[1:]) for k, v in before.items()}
    opt = task.optimizer(task.model.parameters())
    opt.zero_grad()
    task.model(fitted).backward()
    opt.step()
    after = task.model.params(1)
    for k in before:
        want = before[k] + 0.5 * (fitted[k].mean(0, keepdim=True) - before[k])
        torch.testing.assert_close(after[k], want)


def test_adapt_fits_and_leaves_the_start_alone():
    g = torch.linspace(-1, 1, 2048)
    x = torch.stack([0.8 * torch.sin(torch.pi * 3 * g) + 0.2 * torch.sin(torch.pi * 7 * g), torch.cos(torch.pi * 2 * g)])
    t = theta.Theta(TINY_THETA)
    start = t.params(2)
    copy = {k: v.clone() for k, v in start.items()}
    rng = np.random.default_rng(0)
    out = theta.adapt(TINY_THETA, start, x, theta.inner_settings(TINY_THETA, 0.3, 30), 1024, rng)
    for k in start:
        assert torch.equal(start[k], copy[k]) and not torch.equal(out[k], copy[k])
    from kancodec.inr import forward
    from kancodec.loss import snr
    assert (snr(forward(TINY_T, out, g), x) > snr(forward(TINY_T, start, g), x) + 3).all(), \
        (snr(forward(TINY_T, out, g), x), snr(forward(TINY_T, start, g), x))


def test_train_theta_saves_a_start_that_encode_uses(corpus, tmp_path, speech, monkeypatch):
    out = tmp_path / "t.safetensors"
    summary = train_theta(corpus, out, TINY_THETA, TINY_META, device="cpu", compile=False)
    assert summary["steps_done"] == 4 and out.is_file() and np.isfinite(summary["val"]["si_snr"])
    rows = [json.loads(line) for line in out.with_name("t.train.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4]
    loaded, ref = theta.load(out)
    assert ref.kind == "theta" and loaded.config == TINY_THETA and ref.train["steps_done"] == 4
    assert not out.with_name("t.ckpt.safetensors").exists()
    # encode from it, by path: every window starts from θ, and the file says so
    x = speech[0][:, :6000]
    opts = dict(config=TINY_T, chunk=2048, overlap=128, compile=False, device="cpu", bits=32)
    kf = api.encode(x, 22050, steps=0, start=str(out), **opts)
    assert kf.encode["start"]["model"] == "t.safetensors" and kf.encode["start"]["sha256"] == ref.sha256
    assert "from the learned start t.safetensors" in " ".join(v for _, v in codec_for(kf).summary(kf, 1000))
    # auto: found by name in the user's folder when it was learned for this network, rate and window
    users = tmp_path / "users"
    users.mkdir()
    (users / f"{fitqueue.AUTO_START}.safetensors").write_bytes(out.read_bytes())
    monkeypatch.setattr(modelfile, "user_models_dir", lambda: users)
    assert api.encode(x, 22050, steps=0, start="auto", **opts).encode["start"]["sha256"] == ref.sha256
    assert "start" not in api.encode(x, 22050, steps=0, start="random", **opts).encode
    assert "start" not in api.encode(x, 22050, steps=0, **opts).encode  # the default is random
    # every window starts from θ itself: the seed changes nothing, as it does for random starts
    a, b = (api.encode(x, 22050, steps=0, start=str(out), seed=s, **opts) for s in (1, 2))
    assert all(np.array_equal(np.asarray(a.tensors[k]), np.asarray(b.tensors[k])) for k in a.tensors)
    a, b = (api.encode(x, 22050, steps=0, seed=s, **opts) for s in (1, 2))
    assert not all(np.array_equal(np.asarray(a.tensors[k]), np.asarray(b.tensors[k])) for k in a.tensors)
    other = dict(opts, chunk=1024)  # another window than θ was learned for: auto falls back to random
    assert "start" not in api.encode(x, 22050, steps=0, start="auto", **other).encode
    assert "start" not in api.encode(x, 16000, steps=0, start="auto", **opts).encode  # another rate: the same


def test_start_errors(tmp_path, speech_wav):
    out = tmp_path / "t.safetensors"
    theta.save(theta.Theta(TINY_THETA), out, {"steps_done": 0})
    args = ["encode", speech_wav, "-o", tmp_path / "o.kan", "--steps", "2", "--compile", "no", "--device", "cpu"]
    assert_one_line_error(cli(*args, "--start", out), 2, "--start", "t.safetensors", "kan L=4")
    assert_one_line_error(cli(*args, "--start", tmp_path / "missing.safetensors"), 3, "not found")
    res = cli("encode", speech_wav, "-o", tmp_path / "o.kan", "--hyper", out, "--start", "auto")
    assert_one_line_error(res, 2, "--start", "--hyper")
    (tmp_path / "bad.safetensors").write_bytes(out.read_bytes()[:-9])
    assert_one_line_error(cli(*args, "--start", tmp_path / "bad.safetensors"), 4)
    assert not (tmp_path / "o.kan").exists()


def test_theta_file_is_checked(tmp_path):
    """A θ file whose tensors do not fit its config is refused with a one-line reason."""
    out = tmp_path / "t.safetensors"
    t = theta.Theta(TINY_THETA)
    tensors = {k.replace("/", "."): v.detach()[0] for k, v in t.values.items()}
    tensors["l0.base"] = tensors["l0.base"][:1]
    modelfile.save_model(out, theta.KIND, TINY_THETA.to_dict(), tensors)
    with pytest.raises(Exception, match="does not match its config"):
        theta.load(out)
    tensors = {k.replace("/", "."): v.detach()[0] for k, v in t.values.items()}
    tensors["l0.base"] = tensors["l0.base"] * float("nan")
    modelfile.save_model(out, theta.KIND, TINY_THETA.to_dict(), tensors, force=True)
    with pytest.raises(Exception, match="non-finite"):
        theta.load(out)


def test_cli_train_theta(corpus, tmp_path):
    out = tmp_path / "t.safetensors"
    res = cli("train-theta", "--data", corpus, "-o", out, "--steps", "2", "--batch", "2", "--inner-steps", "2",
              "--loss-window", "2048", "--val-every", "2", "--compile", "no", "--device", "cpu")
    assert res.exit_code == 0, res.output
    assert "wrote" in res.stderr and theta.load(out)[1].train["steps_done"] == 2
    assert_one_line_error(cli("train-theta", "--data", corpus, "-o", out, "--inner-steps", "0"), 2, "--inner-steps")


def test_bench_hyper_curves(corpus, tmp_path):
    """bench hyper --curve: quality against steps from each start, the same fits as encode's."""
    from kancodec import hyper
    from kancodec.hyperbench import run_hyper_bench

    target = KANConfig(n_freqs=4, hidden=(8,), grid=5)
    h = hyper.HyperConfig(target=target.to_dict(), window=4096, channels=(4, 8), strides=(8, 8), frame_channels=4,
                          latent=16, theta_hidden=8, hidden=32)
    hyper.save(hyper.HyperNetwork(h), tmp_path / "h.safetensors", {"steps_done": 1})
    theta.save(theta.Theta(theta.ThetaConfig(target=target.to_dict(), window=4096)), tmp_path / "t.safetensors")
    r = run_hyper_bench(corpus, str(tmp_path / "h.safetensors"), clips=1, refine=5, max_steps=0, device="cpu",
                        compile=False, log=lambda m: None, curve=(0, 5, 20), theta=str(tmp_path / "t.safetensors"))
    assert set(r["curves"]) == {"random", "theta", "hyper"} and r["theta"]["model"] == "t.safetensors"
    for points in r["curves"].values():
        assert [p["steps"] for p in points] == [0, 5, 20] and all(np.isfinite(p["snr"]) for p in points)
        assert points[2]["snr"] > points[0]["snr"]  # fitting from any start improves on it
    assert r["curves"]["hyper"][0]["si_snr"] == r["one_shot"]["si_snr"]
    assert r["refine"]["steps"] == 5 and r["random_same_steps"]["steps"] == 5
    assert "random_to_reach" not in r
    r = run_hyper_bench(corpus, str(tmp_path / "h.safetensors"), clips=1, refine=5, max_steps=0, device="cpu",
                        compile=False, log=lambda m: None, curve=(0,), theta="none")
    assert set(r["curves"]) == {"random", "hyper"}


def test_cli_bench_hyper_curve_errors(corpus):
    assert_one_line_error(cli("bench", "hyper", corpus, "--curve", "0,ten"), 2, "--curve", "0,10,30")
    assert_one_line_error(cli("bench", "hyper", corpus, "--curve", "0,-5"), 2, "--curve")
    assert_one_line_error(cli("bench", "hyper", corpus, "--max-steps", "-1"), 2, "--max-steps")


def test_auto_start_falls_back_on_a_damaged_theta(tmp_path, speech, monkeypatch):
    """--start auto with a broken theta-kan in the user's folder: a warning naming it, then random."""
    users = tmp_path / "users"
    users.mkdir()
    good = tmp_path / "t.safetensors"
    theta.save(theta.Theta(TINY_THETA), good)
    (users / f"{fitqueue.AUTO_START}.safetensors").write_bytes(good.read_bytes()[:-9])
    monkeypatch.setattr(modelfile, "user_models_dir", lambda: users)
    opts = dict(config=TINY_T, chunk=2048, overlap=128, compile=False, device="cpu", bits=32)
    with pytest.warns(UserWarning, match="starting from random weights"):
        kf = api.encode(speech[0][:, :6000], 22050, steps=0, start="auto", **opts)
    assert "start" not in kf.encode
    from kancodec.errors import FormatError
    with pytest.raises(FormatError, match="truncated|damaged"):  # asked for by name, the same file is an error
        api.encode(speech[0][:, :6000], 22050, steps=0, start=str(users / f"{fitqueue.AUTO_START}.safetensors"), **opts)


def test_a_start_for_the_network_kbps_chooses_is_used_with_tiling(tmp_path, speech, monkeypatch):
    """--kbps picks the network after the audio is cut: a θ learned for that network starts it (by
    path or found by auto), also when the tiling lowered the fitting rate to drop a last window;
    auto takes no θ at a rate asked for with fit_sr or an input's own rate other than θ's."""
    x = speech[0][:, :33075]  # 1.5 s: three half windows at 22.05 kHz, one fewer at a rate 4 % lower
    opts = dict(compile=False, device="cpu", steps=0)
    plain = api.encode(x, 22050, kbps=48, **opts)
    assert plain.audio.fit_sr < 22050  # the tiling lowered the rate
    out = tmp_path / "t48.safetensors"
    cfg = theta.ThetaConfig(target=plain.config.to_dict(), window=plain.audio.chunk, sample_rate=22050, inner_steps=3)
    theta.save(theta.Theta(cfg), out, {"steps_done": 0})
    kf = api.encode(x, 22050, kbps=48, start=str(out), **opts)  # by path: no error about the default network
    assert kf.encode["start"]["model"] == "t48.safetensors"
    assert (kf.config, kf.audio.fit_sr, kf.audio.windows) == (plain.config, plain.audio.fit_sr, plain.audio.windows)
    users = tmp_path / "users"
    users.mkdir()
    (users / f"{fitqueue.AUTO_START}.safetensors").write_bytes(out.read_bytes())
    monkeypatch.setattr(modelfile, "user_models_dir", lambda: users)
    assert api.encode(x, 22050, kbps=48, start="auto", **opts).encode["start"]["model"] == f"{fitqueue.AUTO_START}.safetensors"
    # another rate than θ's, asked for or the input's own, even within 20 % of it: auto starts from random
    assert "start" not in api.encode(x, 22050, kbps=48, fit_sr=20000, start="auto", **opts).encode
    assert "start" not in api.encode(x[:, :30000], 20000, kbps=48, start="auto", **opts).encode
