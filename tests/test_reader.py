"""The .kan reader (issue 14): one schema for the metadata, resource bounds, streaming decode,
and an ``info`` that shows odd values instead of raising."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

import kancodec
from kancodec import container, fitqueue, inrcodec, kanfile
from kancodec.audio import n_windows
from kancodec.errors import FormatError, OptionError
from kancodec.inr import KANConfig
from kancodec.inrfile import AudioInfo, KanFile
from conftest import TINY_ENCODE, assert_one_line_error, cli, rewrite_metadata, version2


@pytest.fixture(scope="module")
def kf():
    x = (0.5 * np.sin(np.arange(6000) / 5.0)).astype(np.float32)[None]
    return kancodec.encode(x, sr=8000, **{**TINY_ENCODE, "steps": 3})


def edit(section: str, **changes):
    def change(m):
        d = json.loads(m["kancodec." + section])
        for k, v in changes.items():
            if v is KeyError:
                d.pop(k)
            else:
                d[k] = v
        m["kancodec." + section] = json.dumps(d)
    return change


# (section, change, what the one-line refusal names) -- each of these decoded to wrong audio,
# raised a traceback or allocated gigabytes before the schema (issue 14's list)
REFUSED = [
    ("audio", {"sample_rate": 0}, "kancodec.audio.sample_rate = 0 is out of range"),
    ("audio", {"sample_rate": float("nan")}, "kancodec.audio.sample_rate = nan is not a whole number"),
    ("audio", {"sample_rate": None}, "kancodec.audio.sample_rate = None is not a whole number"),
    ("audio", {"sample_rate": "16000"}, "kancodec.audio.sample_rate = '16000' is not a whole number"),
    ("audio", {"sample_rate": 4000}, "kancodec.audio.fit_frames"),
    ("audio", {"fit_sr": 1}, "kancodec.audio.fit_sr = 1 is out of range"),
    ("audio", {"chunk": 1_000_000}, "kancodec.audio.windows"),
    ("audio", {"chunk": 10**9}, "kancodec.audio.chunk = 1000000000 is out of range"),
    ("audio", {"overlap": -1}, "kancodec.audio.overlap = -1 is out of range"),
    ("audio", {"overlap": 32767}, "kancodec.audio.overlap = 32767 is out of range"),
    ("audio", {"frames": 1.5}, "kancodec.audio.frames = 1.5 is not a whole number"),
    ("audio", {"frames": "100"}, "kancodec.audio.frames = '100' is not a whole number"),
    ("audio", {"frames": 10**12}, "kancodec.audio.frames = 1000000000000 is out of range"),
    ("audio", {"frames": 1}, "kancodec.audio.fit_frames"),
    ("audio", {"windows": 0}, "kancodec.audio.windows = 0 does not tile"),
    ("audio", {"channels": True}, "kancodec.audio.channels = True is not a whole number"),
    ("audio", {"windows": KeyError}, "kancodec.audio.windows is missing"),
    ("audio", {"extra": 1}, "kancodec.audio.extra = 1 is not a field of this format"),
    ("inr", {"grid": 10.0}, "kancodec.inr.grid = 10.0 is not a whole number"),
    ("inr", {"n_freqs": 10.0}, "kancodec.inr.n_freqs = 10.0 is not a whole number"),
    ("inr", {"grid_range": [1.0, -1.0]}, "kancodec.inr.grid_range = [1.0, -1.0] is not an increasing range"),
    ("inr", {"grid_range": [float("nan"), 1.0]}, "kancodec.inr.grid_range[0] = nan is not a finite number"),
    ("inr", {"grid_range": [-1.0, 0.0, 1.0]}, "kancodec.inr.grid_range = [-1.0, 0.0, 1.0] is not a pair"),
    ("inr", {"order": 9}, "kancodec.inr.order = 9 is out of range"),
    ("inr", {"arch": "finer"}, "kancodec.inr.omega_first is missing"),
    ("inr", {"arch": "mamba"}, "kancodec.inr.arch = 'mamba' is not one of"),
    ("inr", {"hidden": [4096, 4096, 4096]}, "is too large a network"),
    ("inr", {"hidden": []}, "kancodec.inr.hidden = [] is not a list"),
    ("quant", {"bits": 17}, "kancodec.quant.bits = 17 is out of range"),
    ("quant", {"bits": "8"}, "kancodec.quant.bits = '8' is not a finite number"),
    ("quant", {"scheme": "affine-per-row"}, "kancodec.quant.bits = 8 is not one of 32"),
    ("quant", {"scheme": "other"}, "kancodec.quant.scheme = 'other' is not one of"),
]


@pytest.mark.parametrize("section,changes,words", REFUSED, ids=[f"{s}-{w[:30]}" for s, _, w in REFUSED])
def test_crafted_metadata_is_refused_naming_the_field(kf, section, changes, words):
    """Even with the checksum recomputed (as a crafter would), a field out of the schema is
    refused with one line naming it and its value."""
    data = rewrite_metadata(kf.to_bytes(), edit(section, **changes))
    with pytest.raises(FormatError) as e:
        kanfile.from_bytes(data, "x.kan")
    assert words in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_a_shape_changing_edit_that_fits_the_schema_is_caught_by_the_tensor_check(kf):
    data = rewrite_metadata(version2(kf), edit("inr", hidden=[12, 9]))
    with pytest.raises(FormatError, match="the config needs"):
        kanfile.from_bytes(data)
    data = rewrite_metadata(kf.to_bytes(), edit("inr", hidden=[12, 9]))  # version 3: the coded weights do not fit
    with pytest.raises(FormatError, match="damaged or crafted"):
        kanfile.from_bytes(data)


def test_cli_refusal_is_exit_4_and_one_line(kf, tmp_path):
    p = tmp_path / "bad.kan"
    p.write_bytes(rewrite_metadata(kf.to_bytes(), edit("audio", sample_rate=0)))
    ref = tmp_path / "ref.wav"
    sf.write(ref, kancodec.decode(kf, device="cpu", compile=False)[0].T, 8000)
    for args in (["decode", p, "-o", tmp_path / "o.wav"], ["info", p], ["eval", ref, p]):
        assert_one_line_error(cli(*args), 4, "kancodec.audio.sample_rate = 0")
    assert not (tmp_path / "o.wav").exists()


def test_info_shows_odd_encode_records_as_they_are(kf, tmp_path):
    """``encode`` is a free-form record: missing keys and non-numbers are shown, never raised on."""
    p = tmp_path / "odd.kan"
    odd = {"snr_db": "[/x] loud", "si_snr_db": None, "settings": {"steps": [1]}, "seconds": "soon"}
    p.write_bytes(rewrite_metadata(kf.to_bytes(), lambda m: m.update({"kancodec.encode": json.dumps(odd)})))
    res = cli("info", p)
    assert res.exit_code == 0, res.output
    assert "SNR [/x] loud dB" in res.stdout and "SI-SNR None dB" in res.stdout and "[1] steps" in res.stdout
    assert "lr ?" in res.stdout
    assert cli("info", "--json", p).exit_code == 0


def long_file(minutes: float, chunk: int = 2048, overlap: int = 128, sr: int = 8000) -> KanFile:
    """A file of ``minutes`` of audio made cheaply: one tiny fit's windows repeated."""
    x = (0.5 * np.sin(np.arange(4000) / 7.0)).astype(np.float32)[None]
    kf = kancodec.encode(x, sr=sr, config=KANConfig(n_freqs=4, hidden=(8,), grid=5), chunk=chunk, overlap=overlap,
                         steps=2, device="cpu", compile=False)
    frames = int(minutes * 60 * sr)
    w = n_windows(frames, chunk, overlap)
    idx = np.arange(w) % kf.audio.windows  # network i of the long file is network idx[i] of the fit
    tensors = {k: v[idx] for k, v in kf.tensors.items() if k != "ans"}
    ends = np.cumsum(kf.tensors["size"].astype(np.int64))
    streams = [kf.tensors["ans"][e - n:e] for e, n in zip(ends, kf.tensors["size"])]
    tensors["ans"] = np.concatenate([streams[i] for i in idx])
    audio = AudioInfo(sample_rate=sr, fit_sr=sr, channels=1, frames=frames, fit_frames=frames, chunk=chunk,
                      overlap=overlap, windows=w)
    return kanfile.from_bytes(KanFile(kf.config, audio, kf.bits, tensors, {}).to_bytes())


def test_decode_streams_in_blocks_of_a_few_windows(tmp_path):
    """The blocks :meth:`stream` yields add up to the one-shot decode, bit for bit, and none
    is longer than one batch of windows: a long file never sits in memory whole."""
    kf = long_file(2)
    whole = kancodec.decode(kf, device="cpu", compile=False)[0]
    blocks = list(inrcodec.CODEC.stream(kf, 8000, device=kancodec.api.resolve_device("cpu"), compile=False))
    assert len(blocks) > 5
    assert max(b.shape[1] for b in blocks) <= 64 * 1920 + 2048 + 1  # a CPU batch (<= 64 windows) and a span
    assert np.array_equal(np.concatenate(blocks, axis=1), whole)
    frames, channels, rate = kancodec.api.decode_to(kf, tmp_path / "o.wav", device="cpu", compile=False)
    y, sr = sf.read(tmp_path / "o.wav", dtype="float32")
    assert (frames, channels, rate, sr) == (whole.shape[1], 1, 8000, 8000)
    assert np.abs(y - whole[0]).max() <= 1 / 32768 + 1e-6  # 16-bit PCM


def test_streamed_resampling_matches_the_one_shot_one(monkeypatch):
    """Below the fitted rate long outputs are resampled as a stream: the same signal within
    soxr's rounding (measured: identical, max difference 0.0, on a signal of peak 0.07), and
    the same length."""
    kf = long_file(1)
    whole = kancodec.decode(kf, sr=5000, device="cpu", compile=False)[0]
    monkeypatch.setattr(inrcodec, "STREAM_FROM", 1000)
    blocks = list(inrcodec.CODEC.stream(kf, 5000, device=kancodec.api.resolve_device("cpu"), compile=False))
    y = np.concatenate(blocks, axis=1)
    assert len(blocks) > 2 and y.shape == whole.shape
    assert float(np.abs(y - whole).max()) < 1e-5


def test_long_files_need_max_seconds(tmp_path):
    kf = long_file(0.25)
    kf.save(tmp_path / "l.kan")
    with pytest.raises(OptionError, match="max_seconds"):
        kancodec.decode(kf, max_seconds=10)
    assert_one_line_error(cli("decode", tmp_path / "l.kan", "-o", tmp_path / "o.wav", "--max-seconds", "10"), 2,
                          "--max-seconds 10 s; raise --max-seconds")
    assert not (tmp_path / "o.wav").exists()
    assert cli("decode", tmp_path / "l.kan", "-o", tmp_path / "o.wav", "--max-seconds", "20").exit_code == 0


def test_streamed_measure_equals_the_whole_one():
    """The quality an encode stores is summed over decode blocks; it equals the one-shot
    measure (to the 3 decimals stored) on a signal with an offset and gain error."""
    from kancodec.codec import measure, measure_blocks

    rng = np.random.default_rng(0)
    r = (0.3 * rng.standard_normal((2, 50000)) + 0.05).astype(np.float32)
    o = (0.8 * r + 0.01 * rng.standard_normal(r.shape) + 0.02).astype(np.float32)
    assert measure_blocks([o[:, :7000], o[:, 7000:31000], o[:, 31000:]], r) == measure(o, r)


def test_silence_costs_no_network_evaluations(monkeypatch):
    """Ten minutes of silence around a short tone: the encode's self-measurement and the
    decode evaluate only the batches holding sound."""
    sr = 8000
    x = np.zeros((1, 10 * 60 * sr), np.float32)
    x[0, 1000:3000] = 0.5 * np.sin(np.arange(2000) / 5.0)
    calls = []
    from kancodec import inrdecode

    real = inrdecode._forward
    monkeypatch.setattr(inrdecode, "_forward", lambda *a, **k: calls.append(1) or real(*a, **k))
    kf = kancodec.encode(x, sr=sr, **{**TINY_ENCODE, "steps": 2})
    assert kf.audio.windows > 2000 and int((kf.gains > 0).sum()) <= 2
    assert len(calls) == 1  # one batch of windows holds the tone
    y = kancodec.decode(kf, device="cpu", compile=False)[0]
    assert len(calls) == 2 and y.shape == x.shape and not y[0, 10000:].any()


def test_cpu_batches_stay_within_the_memory_budget():
    """Any channel count: batches are windows, each costing its measured peak; the budget
    holds for the default network eager and compiled, and for a wider one."""
    from kancodec.inr import make_config
    from kancodec.runtime import batch_size, cpu_budget, fit_memory

    cpu = kancodec.api.resolve_device("cpu")
    for config in (make_config("kan"), make_config("kan", hidden=(96, 48, 24))):
        scale = fitqueue.memory_scale(config)
        for compiled in (False, True):
            b = batch_size(cpu, 32768, compiled, scale)
            assert 1 <= b <= 8
            assert b == 1 or fit_memory(cpu, 32768, b, compiled, scale) <= cpu_budget()
    assert fitqueue.memory_scale(make_config("kan")) == 1.0
    assert fitqueue.memory_scale(make_config("kan", hidden=(96, 48, 24))) > 1.5


def test_decode_work_counts_the_first_layers_basis_and_the_output_rate(tmp_path):
    """A KAN's first layer sees 2L × (G + k + 1) values per sample (1,040 bytes by default),
    and the working set grows with the output rate: a wide grid in a long window, or a file
    fitted at 1 kHz decoded at 384 kHz, is refused before it allocates (review findings)."""
    from kancodec import schema
    from kancodec.inr import make_config

    assert schema.feature_bytes(make_config("kan")) == 20 * (12 + 1) * 4  # the basis and the base branch
    wide = make_config("kan", n_freqs=32, grid=256, order=5, hidden=(1,))
    assert schema.decode_work(wide, 1 << 20, 16000, 16000) > schema.MAX_WORK_BYTES
    x = (0.5 * np.sin(np.arange(16000) / 5.0)).astype(np.float32)[None]
    low = kancodec.encode(x, sr=8000, **{**TINY_ENCODE, "steps": 0, "chunk": 32768, "overlap": 1024}, fit_sr=1000)
    with pytest.raises(OptionError, match="sr 384000: decoding this file at 384000 Hz needs"):
        kancodec.decode(low, sr=384000)
    assert kancodec.decode(low, sr=16000, device="cpu", compile=False)[0].shape == (1, 32000)


def test_stored_values_must_be_finite_and_sane(kf):
    for name, value in (("gain", np.nan), ("gain", np.inf), ("gain", -0.5), ("step", 3e38), ("step", np.nan)):
        bad = KanFile(kf.config, kf.audio, kf.bits, {**kf.tensors, name: np.full_like(kf.tensors[name], value)},
                      kf.encode)
        with pytest.raises(FormatError, match=f"tensor {name} holds NaN, infinite, huge"):
            kanfile.from_bytes(bad.to_bytes())
    old = kanfile.from_bytes(version2(kf))  # version 2: the affine steps and offsets
    for name, value in (("step.l0.base", 3e38), ("lo.l1.spline", -np.inf)):
        t = {**old.tensors, name: np.full_like(old.tensors[name], value)}
        with pytest.raises(FormatError, match=f"tensor {name} holds NaN, infinite, huge"):
            kanfile.from_bytes(container.write(old.TAG, 2, {**old.fields(), "encode": old.encode}, t))


def test_encode_refuses_settings_it_could_not_read_back(speech_wav, tmp_path):
    out = tmp_path / "o.kan"
    assert_one_line_error(cli("encode", speech_wav, "-o", out, "--steps", "0", "--n-freqs", "40"), 2,
                          "kancodec.inr.n_freqs = 40 is out of range", "could not read the file back")
    assert not out.exists()


def test_odd_json_in_metadata_is_one_line(kf, tmp_path):
    """Nesting deeper than the JSON parser's recursion, numbers of more than 4,300 digits, and
    numbers too large to format: refused in one line, or shown (``info``)."""
    p = tmp_path / "odd.kan"
    for section, text in (("encode", "[" * 100_000), ("audio", '{"frames": 1' + "0" * 5000 + "}")):
        p.write_bytes(rewrite_metadata(kf.to_bytes(), lambda m: m.update({"kancodec." + section: text})))
        assert_one_line_error(cli("info", p), 4, "not valid JSON")
    p.write_bytes(rewrite_metadata(kf.to_bytes(), lambda m: m.update(
        {"kancodec.encode": json.dumps({"snr_db": 10**400, "si_snr_db": 1, "seconds": 10**400})})))
    res = cli("info", p)
    assert res.exit_code == 0 and "SNR 1" in res.stdout, res.output


def test_output_rate_and_flac_channel_checks(kf, tmp_path):
    assert kancodec.decode(kf, sr=16000.0, device="cpu", compile=False)[1] == 16000
    with pytest.raises(OptionError, match="sr 22050.5: must be a whole number"):
        kancodec.decode(kf, sr=22050.5)
    nine = KanFile(kf.config, AudioInfo(**{**kf.audio.__dict__, "channels": 9}), kf.bits,
                   {k: np.concatenate([v] * 9) for k, v in kf.tensors.items()}, kf.encode)
    from kancodec.errors import OutputError
    with pytest.raises(OutputError, match="FLAC holds at most 8 channels"):
        kancodec.api.decode_to(nine, tmp_path / "o.flac", device="cpu", compile=False)
    assert not (tmp_path / "o.flac").exists()


def test_autoencoder_decodes_are_bounded(monkeypatch):
    """Autoencoder files decode in one piece: past MAX_SAMPLES they are refused, not attempted."""
    from pathlib import Path

    from kancodec import aecodec

    f = Path(__file__).parent / "data" / "ae-krvq-2books.kan"
    assert kancodec.decode(f, device="cpu")[0].shape == (1, 22050)
    monkeypatch.setattr(aecodec, "MAX_SAMPLES", 10_000)
    with pytest.raises(OptionError, match="autoencoder files decode in one piece"):
        kancodec.decode(f, device="cpu")


def test_encode_refuses_a_file_too_costly_to_decode_at_its_own_rate():
    """Fitted at 1 kHz in 2^20-sample windows, 48 kHz audio would need tens of GiB per window
    to decode at its rate: refused before fitting, naming the two options that fix it."""
    x = (0.1 * np.sin(np.arange(48000) / 5.0)).astype(np.float32)[None]
    with pytest.raises(OptionError, match=r"decoding the file at 48000 Hz would need [\d.]+ GiB per window.*"
                                          r"raise fit_sr or lower chunk"):
        kancodec.encode(x, sr=48000, chunk=1 << 20, overlap=0, fit_sr=1000, steps=0, device="cpu", compile=False)


def test_out_of_memory_is_one_line(kf, tmp_path, monkeypatch):
    """The last line of defence: a MemoryError anywhere in a command is one line, exit 1."""
    p, out = tmp_path / "a.kan", tmp_path / "o.wav"
    kf.save(p)

    def no_memory(*a, **k):
        raise MemoryError
    monkeypatch.setattr(kancodec.api, "decode_to", no_memory)
    assert_one_line_error(cli("decode", p, "-o", out), 1, "out of memory")
    assert not out.exists()
