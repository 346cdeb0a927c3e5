"""The paper's baseline INRs share the batched interface, the fitter, the format and decode."""

import numpy as np
import pytest
import torch

import kancodec
from kancodec import inr
from kancodec.errors import KanError
from kancodec.fit import FitSettings, fit, time_grid
from kancodec.loss import si_snr

# The paper's parameter budgets (Table 1): NeRF ~33k, SIREN ~31k, RFF ~39k, WIRE ~31k, FINER ~31k.
BUDGETS = {"kan": 33768, "nerf": 33000, "siren": 31000, "rff": 39000, "wire": 31000, "finer": 31000}
# SI-SNR (dB) after fitting the tone below for STEPS steps. Measured on the project's CPU:
# kan 22.8, nerf 12.5, siren 54.6, rff 51.7, wire 49.9, finer 51.2; the floors keep a wide
# margin, and a broken activation, init or learning rate lands far below them.
STEPS = 100
FLOORS = {"kan": 15.0, "nerf": 8.0, "siren": 35.0, "rff": 35.0, "wire": 35.0, "finer": 35.0}


def tone(n=2048, sr=8000):
    t = np.arange(n) / sr
    x = 0.8 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * 1250 * t)
    return torch.tensor(x / np.abs(x).max(), dtype=torch.float32)[None]


def test_every_family_is_registered_with_the_papers_budget():
    assert set(inr.ARCHS) == set(BUDGETS)
    for arch, budget in BUDGETS.items():
        cfg = inr.make_config(arch)
        assert cfg.arch == arch
        assert abs(cfg.n_params - budget) / budget < 0.03, (arch, cfg.n_params)
        assert inr.config_from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("arch", list(BUDGETS))
def test_each_family_fits_a_tone(arch):
    cfg = inr.make_config(arch)
    x = tone()
    r = fit(cfg, x, FitSettings(steps=STEPS, lr=cfg.lr), 8000)
    y = inr.forward(cfg, r.params, time_grid(x.shape[1]))
    assert float(si_snr(y, x)) > FLOORS[arch]


@pytest.mark.parametrize("arch", ["siren", "wire", "rff"])
def test_baselines_round_trip_through_the_file_format(tmp_path, arch):
    """Encode (batched windows, quantised), save, load, decode at 2x: the same path as the KAN."""
    sr = 8000
    x = np.tile(tone(2048, sr).numpy(), (1, 3)) * 0.5  # 0.77 s: three windows of 1024 with overlap
    cfg = inr.make_config(arch, hidden=(32, 32))
    kf = kancodec.encode(x, sr, config=cfg, chunk=1024, overlap=64, steps=60, compile=False, device="cpu")
    assert kf.audio.windows == 7 and kf.config == cfg
    path = tmp_path / f"{arch}.kan"
    kancodec.save(kf, path)
    back = kancodec.load(path)
    assert back.config == cfg
    y, rate = kancodec.decode(path, sr=2 * sr)
    assert rate == 2 * sr and y.shape == (1, 2 * x.shape[1]) and np.isfinite(y).all()
    y1, _ = kancodec.decode(back)
    assert float(si_snr(torch.from_numpy(y1), torch.from_numpy(x))) == pytest.approx(kf.encode["si_snr_db"], abs=0.01)


def test_make_config_names_what_applies():
    with pytest.raises(KanError, match="grid does not apply to arch siren"):
        inr.make_config("siren", grid=5)
    with pytest.raises(KanError, match="choose one of: kan, nerf, siren"):
        inr.make_config("mlp")
    assert inr.make_config("nerf", n_freqs=8).n_freqs == 8
    assert inr.make_config("kan", hidden=None).hidden == (48, 24, 12)  # None keeps the default


def test_rff_features_are_rebuilt_identically_from_the_config():
    cfg = inr.make_config("rff")
    t = time_grid(1000)
    assert torch.equal(cfg.features(t), inr.config_from_dict(cfg.to_dict()).features(t))
    assert not torch.equal(cfg.features(t), inr.make_config("rff", seed=1).features(t))


@pytest.mark.parametrize("arch", ["siren", "finer", "wire"])
def test_sine_networks_keep_their_first_layer_in_float(arch, monkeypatch):
    """8-bit steps on a first layer multiplied by ω₀ wrecked the phase (-43.6 dB on speech).
    Measured on this tone, float / 8-bit: siren 52.0 / 47.6, finer 51.5 / 42.6, wire 45.9 / 30.9 dB;
    the rest of the gap is the other layers' 8-bit steps."""
    x = tone().numpy() * 0.5
    cfg = inr.make_config(arch)

    def encode(bits):
        return kancodec.encode(x, 8000, config=cfg, chunk=2048, overlap=0, steps=100, bits=bits, compile=False,
                               device="cpu")

    kf8, kf32 = encode(8), encode(32)
    assert kf8.tensors["q.l0.w"].dtype == np.float32 and kf8.scheme == "laplace-ans"
    assert kf8.tensors["step"].shape[1] == len(inr.stored_shapes(cfg)) - len(cfg.keep_float)  # the rest: coded
    assert kf32.encode["si_snr_db"] > 35 and kf8.encode["si_snr_db"] > 20
    monkeypatch.setattr(type(cfg), "keep_float", property(lambda self: frozenset()))
    assert encode(8).encode["si_snr_db"] < kf8.encode["si_snr_db"] - 10  # what the float layer saves
