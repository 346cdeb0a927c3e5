"""``kancodec eval``: JSON schema, .kan inputs, rates/lengths/channels, optional extras, errors."""

import builtins
import json
import sys

import numpy as np
import pytest
import soundfile as sf

from kancodec.metrics import CORE
from conftest import TINY_ARGS, assert_one_line_error, cli, leftovers


@pytest.fixture()
def pair(tmp_path, speech):
    """1.5 s of real speech at 16 kHz and a copy with noise 20 dB down."""
    from kancodec.audio import resample

    x, sr = resample(speech[0][:, 11025:11025 + 33075], speech[1], 16000)[0], 16000
    sf.write(tmp_path / "speech.wav", x, sr, subtype="FLOAT")
    rng = np.random.default_rng(0)
    noisy = x + rng.normal(size=x.shape) * np.sqrt(np.mean(x**2)) * 0.1
    out = tmp_path / "noisy.wav"
    sf.write(out, noisy, sr, subtype="FLOAT")
    return tmp_path / "speech.wav", out


def test_eval_json_has_every_metric_per_channel_and_mean(pair):
    ref, out = pair
    res = cli("eval", ref, out, "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["sample_rate"] == 16000 and doc["frames"] == doc["ref_frames"] == doc["out_frames"] == 24000
    assert len(doc["channels"]) == 1 and set(doc["mean"]) == set(CORE)
    assert all(isinstance(doc["mean"][m], float) for m in CORE), json.dumps(doc["mean"])
    assert doc["mean"]["snr"] == pytest.approx(20, abs=0.3)
    assert 1.0 < doc["mean"]["pesq"] < 4.0 and 0.5 < doc["mean"]["stoi"] <= 1
    assert doc["notes"] == []


def test_eval_table_says_which_way_is_better(pair):
    ref, out = pair
    res = cli("eval", ref, out)
    assert res.exit_code == 0
    for word in ("SI-SNR", "PESQ", "STOI", "LSD", "Wasserstein", "higher", "lower"):
        assert word in res.stdout, word


def test_eval_of_a_kan_file_reports_its_bitrate(tmp_path, tone_wav):
    kan = tmp_path / "t.kan"
    assert cli("encode", tone_wav, "-o", kan, "-q", *TINY_ARGS).exit_code == 0
    doc = json.loads(cli("eval", tone_wav, kan, "--json").stdout)
    assert doc["kan"]["bytes"] == kan.stat().st_size and doc["kan"]["bits"] == 8
    assert doc["kan"]["kbps"] == pytest.approx(kan.stat().st_size * 8 / 0.5 / 1000)
    assert doc["kan"]["ratio_to_pcm16"] == pytest.approx(128 / doc["kan"]["kbps"])
    assert doc["out_frames"] == doc["ref_frames"] == 4000
    res = cli("eval", tone_wav, kan)
    assert "kbps" in res.stdout and "16-bit PCM" in res.stdout


def test_eval_resamples_and_compares_the_common_part(tmp_path, speech_wav):
    x, sr = sf.read(speech_wav)
    from kancodec.audio import resample

    up = resample(x[None].astype(np.float32), sr, 16000)[0][:-800]  # other rate, 0.05 s shorter
    out = tmp_path / "up.wav"
    sf.write(out, up, 16000, subtype="FLOAT")
    doc = json.loads(cli("eval", speech_wav, out, "--json").stdout)
    assert doc["out_frames"] == len(x) - 400 and doc["frames"] == len(x) - 400
    assert any("resampled from 16000" in n for n in doc["notes"])
    assert any("compared the first" in n for n in doc["notes"])
    assert doc["mean"]["snr"] > 20


def test_eval_stereo_scores_each_channel(tmp_path):
    sr = 16000
    t = np.arange(sr) / sr
    ref = np.stack([np.sin(2 * np.pi * 300 * t), np.sin(2 * np.pi * 500 * t)], 1) * 0.5
    out = ref.copy()
    out[:, 1] += 0.05 * np.random.default_rng(0).normal(size=len(t))
    sf.write(tmp_path / "r.wav", ref, sr, subtype="FLOAT")
    sf.write(tmp_path / "o.wav", out, sr, subtype="FLOAT")
    doc = json.loads(cli("eval", tmp_path / "r.wav", tmp_path / "o.wav", "--json").stdout)
    a, b = doc["channels"]
    assert a["snr"] == "inf" and b["snr"] < 20
    assert doc["mean"]["mse"] == pytest.approx((a["mse"] + b["mse"]) / 2)


def test_eval_of_silence_says_na_instead_of_crashing(tmp_path):
    sf.write(tmp_path / "z.wav", np.zeros(16000), 16000)
    res = cli("eval", tmp_path / "z.wav", tmp_path / "z.wav", "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert "n/a" in doc["mean"]["pesq"] and "silent" in doc["mean"]["pesq"]["n/a"]
    assert "n/a" in cli("eval", tmp_path / "z.wav", tmp_path / "z.wav").stdout


def test_eval_bad_inputs(tmp_path, tone_wav):
    assert_one_line_error(cli("eval", tmp_path / "nope.wav", tone_wav), 3, "no such file")
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"not audio at all")
    assert_one_line_error(cli("eval", tone_wav, junk), 3, "not a readable audio file")
    bad = tmp_path / "bad.kan"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}")
    assert_one_line_error(cli("eval", tone_wav, bad), 4)
    sf.write(tmp_path / "three.wav", np.zeros((8000, 3)), 8000)
    sf.write(tmp_path / "two.wav", np.zeros((8000, 2)), 8000)
    assert_one_line_error(cli("eval", tmp_path / "three.wav", tmp_path / "two.wav"), 3, "channel counts differ")


def test_eval_plot(tmp_path, pair):
    pytest.importorskip("matplotlib")
    ref, out = pair
    png = tmp_path / "spec.png"
    res = cli("eval", ref, out, "--plot", png, "-q")
    assert res.exit_code == 0, res.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert_one_line_error(cli("eval", ref, out, "--plot", png), 5, "already exists", "--force")
    assert cli("eval", ref, out, "--plot", png, "--force", "-q").exit_code == 0
    assert leftovers(tmp_path) == []


def test_eval_plot_errors(tmp_path, pair, monkeypatch):
    ref, out = pair
    assert_one_line_error(cli("eval", ref, out, "--plot", tmp_path / "spec.txt"), 5, ".png")
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    assert_one_line_error(cli("eval", ref, out, "--plot", tmp_path / "spec.png"), 2, "kancodec[plot]")
    assert not (tmp_path / "spec.png").exists()


def test_optional_metrics_explain_when_missing(pair, monkeypatch):
    ref, out = pair
    monkeypatch.setitem(sys.modules, "visqol", None)  # import visqol -> ImportError
    monkeypatch.setitem(sys.modules, "cdpam", None)
    doc = json.loads(cli("eval", ref, out, "--json", "--visqol", "--cdpam").stdout)
    assert "pip install visqol-python" in doc["mean"]["visqol"]["n/a"]
    assert "kancodec[cdpam]" in doc["mean"]["cdpam"]["n/a"]


def test_visqol_when_installed(pair):
    pytest.importorskip("visqol")
    ref, out = pair
    doc = json.loads(cli("eval", ref, ref, "--json", "--visqol").stdout)
    clean = doc["mean"]["visqol"]
    noisy = json.loads(cli("eval", ref, out, "--json", "--visqol").stdout)["mean"]["visqol"]
    assert 1 <= noisy < clean <= 5


def test_cdpam_when_installed(pair):
    pytest.importorskip("cdpam")
    ref, out = pair
    same = json.loads(cli("eval", ref, ref, "--json", "--cdpam").stdout)["mean"]["cdpam"]
    noisy = json.loads(cli("eval", ref, out, "--json", "--cdpam").stdout)["mean"]["cdpam"]
    assert same < 1e-6 < noisy  # a distance: zero for identical signals
