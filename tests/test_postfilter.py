"""The post-filter (issue 15): band gains measured by the encoder, applied by the decoder."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import kancodec
from kancodec import container, kanfile, postfilter
from kancodec.errors import FormatError
from kancodec.inrfile import KanFile
from kancodec.loss import snr
from conftest import TINY_ENCODE, assert_one_line_error, cli, rewrite_compact

SR = 22050


def _tone(f: float, n: int = 8192, sr: int = SR) -> torch.Tensor:
    return torch.sin(2 * torch.pi * f * torch.arange(n, dtype=torch.float64) / sr)


def _highpassed_noise(n: int, cut: float, seed: int = 0) -> torch.Tensor:
    spec = torch.fft.rfft(torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    spec[torch.fft.rfftfreq(n, 1 / SR) < cut] = 0
    return torch.fft.irfft(spec, n)


def test_noise_in_the_bands_a_fit_missed_is_turned_down_and_the_rest_left_alone():
    original = 0.5 * _tone(300.0)
    noise = _highpassed_noise(8192, 5000.0)
    decoded = original + 0.1 * noise / noise.std()
    codes = postfilter.measure(decoded[None], original[None], SR)[0]
    edges = postfilter.band_edges(SR)
    tone_band = int(np.searchsorted(edges, 300.0)) - 1
    noisy = edges[:-1] >= 5000.0
    assert codes[tone_band] == postfilter.UNITY
    assert (codes[noisy] == 0).all(), codes  # the floor, -15 dB
    filtered = postfilter.apply(decoded[None], codes[None], SR, SR)
    before, after = snr(decoded[None], original[None]).item(), snr(filtered, original[None]).item()
    assert after > before + 12, (before, after)  # measured: 11.0 -> 26.0 dB (the noise down by the floor's 15 dB)


def test_unity_codes_leave_the_windows_exactly_as_they_are():
    y = torch.randn(3, 4096)
    assert torch.equal(postfilter.apply(y, np.full((3, postfilter.BANDS), postfilter.UNITY), SR, SR), y)


def test_at_a_higher_output_rate_bins_above_the_fitted_band_are_untouched():
    sr = 2 * SR
    low, high = _tone(300.0, 16384, sr), _tone(15000.0, 16384, sr)  # 15 kHz: above the fit's 11.025 kHz
    mute = np.zeros((1, postfilter.BANDS), np.uint8)  # every band at the floor, -15 dB
    out = postfilter.apply((low + high)[None], mute, sr, SR)[0]
    mid = slice(2048, -2048)
    kept = (out * high)[mid].sum() / (high * high)[mid].sum()
    left = (out * low)[mid].sum() / (low * low)[mid].sum()
    assert abs(kept.item() - 1) < 0.01 and abs(left.item() - 10 ** (-15 / 20)) < 0.01, (kept, left)


@pytest.fixture(scope="module")
def pair():
    rng = np.random.default_rng(0)
    t = np.arange(6000) / 8000
    x = (0.4 * np.sin(2 * np.pi * 220 * t) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)[None]
    return (kancodec.encode(x, sr=8000, **TINY_ENCODE),
            kancodec.encode(x, sr=8000, **TINY_ENCODE, postfilter=False))


def test_the_file_carries_the_filter_and_decodes_closer_to_the_input(pair):
    on, off = pair
    assert on.post.shape == (on.audio.windows, postfilter.BANDS) and off.post is None
    for name in on.tensors:  # the same fit: only the post-filter differs
        if name != "post":
            assert np.array_equal(on.tensors[name], off.tensors[name]), name
    assert (on.post != postfilter.UNITY).any()
    # the least-squares gains can only bring the decode closer (to the rounding of their codes)
    assert on.encode["snr_db"] >= off.encode["snr_db"] - 0.05, (on.encode["snr_db"], off.encode["snr_db"])
    again = kanfile.from_bytes(on.to_bytes())
    assert np.array_equal(again.post, on.post)
    assert len(on.to_bytes()) - len(off.to_bytes()) <= 20 + on.post.size // 2


def test_codes_pack_two_to_a_byte():
    codes = np.arange(32, dtype=np.uint8).reshape(2, 16) % postfilter.LEVELS
    packed = postfilter.pack(codes)
    assert packed.shape == (2, 8) and packed[0, 0] == 0x10 and np.array_equal(postfilter.unpack(packed), codes)


def test_no_postfilter_on_the_command_line_and_info(tmp_path, speech_wav):
    from conftest import TINY_ARGS
    for flag, shown in ((), "16 band gains per window"), (("--no-postfilter",), "none"):
        out = tmp_path / f"a{len(flag)}.kan"
        res = cli("encode", speech_wav, "-o", out, *TINY_ARGS, "--steps", "3", *flag)
        assert res.exit_code == 0, res.output
        info = cli("info", out)
        assert "post-filter" in info.output and shown in info.output, info.output


def _with_post(data: bytes, post, version: str | None = None) -> bytes:
    def change(meta, tensors):
        tensors["post"] = post
        if version:
            meta[container.PREFIX + "version"] = version
    return rewrite_compact(data, change)


@pytest.mark.parametrize("post, words", [
    (np.zeros((1, postfilter.BANDS // 2), np.int16), "tensor post is int16"),
    (np.zeros((1, postfilter.BANDS), np.uint8), "the file needs uint8"),  # unpacked codes
    (np.zeros((7, postfilter.BANDS // 2), np.uint8), "the file needs uint8"),
])
def test_crafted_post_filters_are_refused(pair, post, words):
    on = pair[0]
    rows = on.audio.channels * on.audio.windows
    if post.shape[0] == 1:
        post = np.repeat(post, rows, axis=0)
    with pytest.raises(FormatError, match=words):
        kanfile.from_bytes(_with_post(on.to_bytes(), post))


def test_a_post_filter_in_an_older_version_is_refused(pair, tmp_path):
    on = pair[0]
    data = _with_post(on.to_bytes(), on.tensors["post"], version="3")
    with pytest.raises(FormatError, match="version before 4"):
        kanfile.from_bytes(data)
    old = KanFile(on.config, on.audio, on.bits, {k: v for k, v in on.tensors.items() if k != "post"}, on.encode,
                  on.scheme)
    path = tmp_path / "v3.kan"
    path.write_bytes(rewrite_compact(old.to_bytes(), lambda m, t: m.update({container.PREFIX + "version": "3"})))
    assert kanfile.load(path).post is None  # a version 3 file without one still decodes
    res = cli("decode", path, "-o", tmp_path / "v3.wav")
    assert res.exit_code == 0, res.output
    (tmp_path / "bad.kan").write_bytes(data)
    assert_one_line_error(cli("decode", tmp_path / "bad.kan", "-o", tmp_path / "bad.wav"), 4, "version before 4")


def test_no_postfilter_with_an_autoencoder_is_one_line(tmp_path, speech_wav):
    out = tmp_path / "a.kan"
    assert_one_line_error(cli("encode", speech_wav, "-o", out, "--ae", "krvq", "--no-postfilter"), 2,
                          "--ae", "drop --no-postfilter")
    assert not out.exists()
