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
    codes = postfilter.measure(decoded[None], original[None], SR)[0, 0]  # one block: the whole window
    edges = postfilter.band_edges(SR)
    tone_band = int(np.searchsorted(edges, 300.0)) - 1
    noisy = edges[:-1] >= 5000.0
    assert codes[tone_band] == postfilter.UNITY
    assert (codes[noisy] == 0).all(), codes  # the floor, -15 dB
    filtered = postfilter.apply(decoded[None], codes[None, None], SR, SR)
    before, after = snr(decoded[None], original[None]).item(), snr(filtered, original[None]).item()
    assert after > before + 12, (before, after)  # measured: 11.0 -> 26.0 dB (the noise down by the floor's 15 dB)


def test_blocks_follow_noise_that_comes_and_goes_within_a_window():
    n = 16384
    assert postfilter.blocks(n, SR) == 8 and postfilter.blocks(32768, SR) == 16 and postfilter.blocks(n, 2 * SR) == 4
    hiss = _highpassed_noise(n, 5000.0, seed=1)
    original = 0.5 * _tone(300.0, n) + 0.05 * hiss / hiss.std()  # a fricative's band all through
    noise = _highpassed_noise(n, 5000.0)
    noise[: n // 2] = 0  # the fit's hiss only in the second half, ten times the band's level
    decoded = original + 0.5 * noise / noise[n // 2:].std()
    codes = postfilter.measure(decoded[None], original[None], SR, 8)[0]
    noisy = postfilter.band_edges(SR)[:-1] >= 5000.0
    assert codes.shape == (8, postfilter.BANDS)
    assert (abs(codes[:3][:, noisy].astype(int) - postfilter.UNITY) <= 1).all(), codes[:, noisy]
    assert (codes[5:][:, noisy] <= 2).all(), codes[:, noisy]
    one = postfilter.measure(decoded[None], original[None], SR, 1)
    first, second = slice(1024, n // 2 - 2048), slice(n // 2 + 2048, -1024)  # clear of the blocks' ramps
    err = {}
    for nb, c in ((1, one), (8, codes[None])):
        out = postfilter.apply(decoded[None], c, SR, SR)[0]
        err[nb] = [snr(out[None, part], original[None, part]).item() for part in (first, second)]
    # one block turns the band down all through, the fricative with it; eight keep it where it is clean
    # (measured, first / second half: one block 18.9 / 11.1 dB, eight 47.9 / 11.1 dB)
    assert err[8][0] > err[1][0] + 10 and err[8][1] > err[1][1] - 1, err


def test_unity_codes_leave_the_windows_exactly_as_they_are():
    y = torch.randn(3, 4096)
    assert torch.equal(postfilter.apply(y, np.full((3, 4, postfilter.BANDS), postfilter.UNITY), SR, SR), y)


def test_at_a_higher_output_rate_bins_above_the_fitted_band_are_untouched():
    sr = 2 * SR
    low, high = _tone(300.0, 16384, sr), _tone(15000.0, 16384, sr)  # 15 kHz: above the fit's 11.025 kHz
    mute = np.zeros((1, 2, postfilter.BANDS), np.uint8)  # every band at the floor, -15 dB
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
    nb = postfilter.blocks(on.audio.chunk, on.audio.fit_sr)
    assert on.post.shape == (on.audio.windows, nb, postfilter.BANDS) and off.post is None
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
    codes = np.arange(96, dtype=np.uint8).reshape(2, 3, 16) % postfilter.LEVELS
    packed = postfilter.pack(codes)
    assert packed.shape == (2, 3, 8) and packed[0, 0, 0] == 0x10 and np.array_equal(postfilter.unpack(packed), codes)


def test_one_block_is_version_4s_fixed_equaliser():
    """A window's STFT times one gain per band, the whole window through (version 4's filter,
    written out here on its own)."""
    y = torch.randn(2, 4096, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    codes = np.random.default_rng(0).integers(0, postfilter.LEVELS, (2, postfilter.BANDS)).astype(np.uint8)
    n_fft = 2 * round(postfilter.N_FFT_22K / 2)
    freqs = np.arange(n_fft // 2 + 1) * SR / n_fft
    band = np.clip(np.searchsorted(postfilter.band_edges(SR), freqs, side="right") - 1, 0, postfilter.BANDS - 1)
    per_bin = torch.from_numpy(10.0 ** ((codes.astype(np.float64) - postfilter.UNITY) * postfilter.STEP_DB / 20))[:, band]
    win = torch.hann_window(n_fft, dtype=torch.float64)
    spec = torch.stft(y, n_fft, n_fft // 4, window=win, center=True, pad_mode="reflect", return_complex=True)
    expected = torch.istft(spec * per_bin[..., None], n_fft, n_fft // 4, window=win, center=True, length=4096)
    assert torch.allclose(postfilter.apply(y, codes[:, None], SR, SR), expected, atol=1e-12)


def test_a_version_4_file_decodes_as_one_block_per_window_and_saves_as_version_5(pair, tmp_path):
    on = pair[0]
    first = postfilter.pack(on.post[:, 0])  # (B, 8): version 4's one row per network
    v4 = kanfile.from_bytes(_with_post(on.to_bytes(), first, version="4"))
    v5 = kanfile.from_bytes(_with_post(on.to_bytes(), first[:, None]))
    assert v4.post.shape == v5.post.shape == (on.post.shape[0], 1, postfilter.BANDS)
    a, b = kancodec.decode(v4)[0], kancodec.decode(v5)[0]
    assert np.array_equal(a, b) and not np.array_equal(a, kancodec.decode(on)[0])
    again = kanfile.from_bytes(v4.to_bytes())  # re-saved: a version 5 file of one block per window
    assert np.array_equal(again.post, v4.post) and np.array_equal(kancodec.decode(again)[0], a)


def test_blocks_never_exceed_what_the_reader_accepts():
    assert postfilter.blocks(1 << 20, 1000) == postfilter.MAX_BLOCKS


def test_no_postfilter_on_the_command_line_and_info(tmp_path, speech_wav):
    from conftest import TINY_ARGS
    for flag, shown in ((), "16 band gains per window in"), (("--no-postfilter",), "none"):
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


@pytest.mark.parametrize("post, version, words", [
    (np.zeros((1, 2, postfilter.BANDS // 2), np.int16), None, "tensor post is int16"),
    (np.zeros((1, 2, postfilter.BANDS), np.uint8), None, "the file needs uint8"),  # unpacked codes
    (np.zeros((7, 2, postfilter.BANDS // 2), np.uint8), None, "the file needs uint8"),
    (np.zeros((1, 0, postfilter.BANDS // 2), np.uint8), None, "blocks"),
    (np.zeros((1, postfilter.MAX_BLOCKS + 1, postfilter.BANDS // 2), np.uint8), None, "blocks"),
    (np.zeros((1, postfilter.BANDS // 2), np.uint8), None, "blocks"),  # version 4's shape in a version 5 file
    (np.zeros((1, 2, postfilter.BANDS // 2), np.uint8), "4", "the file needs uint8"),  # and the other way round
])
def test_crafted_post_filters_are_refused(pair, post, version, words):
    on = pair[0]
    rows = on.audio.channels * on.audio.windows
    if post.shape[0] == 1:
        post = np.repeat(post, rows, axis=0)
    with pytest.raises(FormatError, match=words):
        kanfile.from_bytes(_with_post(on.to_bytes(), post, version))


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
