"""The command line: exit codes, one-line errors, no partial outputs, info --json."""

import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import pytest
import soundfile as sf

from conftest import TINY_ARGS, assert_one_line_error, cli, has_cuda, leftovers


@pytest.fixture(scope="module")
def encoded(tmp_path_factory):
    """One tiny encode of 0.5 s of a 440 Hz tone at 8 kHz, shared by the tests of this module."""
    folder = tmp_path_factory.mktemp("encoded")
    wav, out = folder / "tone.wav", folder / "tone.kan"
    sf.write(wav, 0.5 * np.sin(2 * np.pi * 440 * np.arange(4000) / 8000), 8000)
    res = cli("encode", wav, "-o", out, "--quiet", *TINY_ARGS)
    assert res.exit_code == 0, res.output
    return out.read_bytes()


@pytest.fixture()
def kan(tmp_path, encoded):
    out = tmp_path / "tone.kan"
    out.write_bytes(encoded)
    return out


def test_encode_decode_info_roundtrip(tmp_path, tone_wav, kan):
    res = cli("info", kan, "--json")
    assert res.exit_code == 0
    doc = json.loads(res.stdout)
    assert doc["format"] == "kancodec-inr" and doc["bits"] == 8
    assert doc["audio"]["sample_rate"] == 8000 and doc["audio"]["frames"] == 4000 and doc["audio"]["channels"] == 1
    assert doc["inr"]["hidden"] == [12, 8] and doc["params_per_window"] > 0
    assert doc["bytes"] == kan.stat().st_size
    assert doc["kbps"] == pytest.approx(doc["bytes"] * 8 / 0.5 / 1000, rel=1e-3)
    assert doc["encode"]["settings"]["steps"] == 5
    out = tmp_path / "back.flac"
    res = cli("decode", kan, "-o", out, "--sr", 16000, "--quiet")
    assert res.exit_code == 0 and res.stdout == "" and res.stderr == ""
    y, sr = sf.read(out)
    assert sr == 16000 and len(y) == 8000
    assert oct(out.stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m


def test_info_table_names_the_facts(kan):
    res = cli("info", kan)
    assert res.exit_code == 0
    for word in ("kbps", "8000 Hz", "params", "depth 8 bits", "bits per weight", "smaller than 16-bit PCM"):
        assert word in res.stdout, word


def test_encode_prints_a_summary_with_bitrate_and_quality(tmp_path, tone_wav):
    res = cli("encode", tone_wav, "-o", tmp_path / "a.kan", *TINY_ARGS)
    assert res.exit_code == 0
    # 4,000 samples in windows of 2,048 overlapping by 128 would be 3 windows, the third holding
    # 32 new samples: the rate is lowered so that 2 hold the file, and the summary says so
    for word in ("kbps", "SI-SNR", "fitting 2 of 2 windows at 7936 Hz", "fitting rate lowered from 8000 Hz",
                 "--fit-sr 8000 keeps it"):
        assert word in " ".join(res.stderr.split()), word
    res = cli("encode", tone_wav, "-o", tmp_path / "b.kan", *TINY_ARGS, "--fit-sr", 8000)
    assert res.exit_code == 0 and "fitting 3 of 3 windows at 8000 Hz" in res.stderr and "lowered" not in res.stderr


def test_missing_input(tmp_path):
    res = cli("encode", tmp_path / "nope.wav", *TINY_ARGS)
    assert_one_line_error(res, 3, "no such file")
    assert list(tmp_path.iterdir()) == []


def test_not_audio(tmp_path):
    p = tmp_path / "notes.wav"
    p.write_text("not audio at all\n")
    res = cli("encode", p, "-o", tmp_path / "x.kan", *TINY_ARGS)
    assert_one_line_error(res, 3, "not a readable audio file")
    assert sorted(q.name for q in tmp_path.iterdir()) == ["notes.wav"]


def test_zero_length_audio(tmp_path):
    p = tmp_path / "empty.wav"
    sf.write(p, np.zeros(0), 8000)
    assert_one_line_error(cli("encode", p, *TINY_ARGS), 3, "zero-length")


def test_nan_samples(tmp_path):
    p = tmp_path / "nan.wav"
    x = np.zeros(1000, np.float32)
    x[10] = np.nan
    sf.write(p, x, 8000, subtype="FLOAT")
    assert_one_line_error(cli("encode", p, *TINY_ARGS), 3, "NaN")


def test_all_silent_audio_roundtrips_to_silence(tmp_path):
    p = tmp_path / "silent.wav"
    sf.write(p, np.zeros(3000), 8000)
    assert cli("encode", p, "-o", tmp_path / "s.kan", "-q", *TINY_ARGS).exit_code == 0
    assert cli("decode", tmp_path / "s.kan", "-o", tmp_path / "s.wav", "-q").exit_code == 0
    y, _ = sf.read(tmp_path / "s.wav")
    assert len(y) == 3000 and np.all(y == 0)


def test_existing_output_is_refused_without_force(tmp_path, tone_wav, kan):
    before = kan.read_bytes()
    res = cli("encode", tone_wav, "-o", kan, *TINY_ARGS)
    assert_one_line_error(res, 5, "already exists", "--force")
    assert kan.read_bytes() == before
    wav = tmp_path / "out.wav"
    wav.write_bytes(b"keep me")
    assert_one_line_error(cli("decode", kan, "-o", wav), 5, "--force")
    assert wav.read_bytes() == b"keep me"
    assert cli("decode", kan, "-o", wav, "--force", "-q").exit_code == 0
    assert sf.info(wav).frames == 4000


def test_missing_and_unwritable_output_folder(tmp_path, tone_wav, kan, monkeypatch):
    res = cli("encode", tone_wav, "-o", tmp_path / "no" / "x.kan", *TINY_ARGS)
    assert_one_line_error(res, 5, "no such directory")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    if os.geteuid() == 0:  # root ignores permissions; make the folder refuse the temporary file instead
        def refuse(*a, **k):
            raise PermissionError(13, "Permission denied")
        monkeypatch.setattr(tempfile, "mkstemp", refuse)
    res = cli("decode", kan, "-o", locked / "x.wav")
    assert_one_line_error(res, 5, "cannot write here")
    locked.chmod(0o700)
    assert list(locked.iterdir()) == []


def test_decode_refuses_unknown_output_format(tmp_path, kan):
    assert_one_line_error(cli("decode", kan, "-o", tmp_path / "x.mp3"), 5, ".mp3", ".wav", ".flac")
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("args, words", [
    (["--bits", "17"], ["--bits 17", "1", "16", "32"]),
    (["--preset", "ultra"], ["--preset 'ultra'", "fast", "standard", "paper"]),
    (["--device", "tpu"], ["--device 'tpu'", "auto", "cpu", "cuda"]),
    (["--compile", "maybe"], ["--compile 'maybe'", "auto", "yes", "no"]),
    (["--hidden", "4,x"], ["--hidden", "48,24,12"]),
    (["--order", "9"], ["order"]),
])
def test_unknown_option_values_list_the_valid_ones(tmp_path, tone_wav, args, words):
    res = cli("encode", tone_wav, "-o", tmp_path / "x.kan", *TINY_ARGS, *args)
    assert_one_line_error(res, 2, *words)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tone.wav"]


@pytest.mark.skipif(has_cuda(), reason="this machine has CUDA")
def test_cuda_asked_for_where_there_is_none(tmp_path, tone_wav):
    res = cli("encode", tone_wav, "-o", tmp_path / "x.kan", *TINY_ARGS, "--device", "cuda")
    assert_one_line_error(res, 6, "no CUDA GPU", "--device cpu")


def test_truncated_kan(tmp_path, kan):
    bad = tmp_path / "bad.kan"
    bad.write_bytes(kan.read_bytes()[:-100])
    assert_one_line_error(cli("info", bad), 4, "truncated")
    assert_one_line_error(cli("decode", bad, "-o", tmp_path / "bad.wav"), 4, "truncated")
    assert not (tmp_path / "bad.wav").exists() and leftovers(tmp_path) == []


def test_tampered_kan(tmp_path, kan):
    data = bytearray(kan.read_bytes())
    data[-5] ^= 0x55
    bad = tmp_path / "bad.kan"
    bad.write_bytes(bytes(data))
    assert_one_line_error(cli("decode", bad, "-o", tmp_path / "bad.wav"), 4, "checksum")


def test_python_dash_m_help_teaches():
    res = subprocess.run([sys.executable, "-m", "kancodec", "--help"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0
    for cmd in ("encode", "decode", "info", "demo", "bench"):
        assert cmd in res.stdout
    res = subprocess.run([sys.executable, "-m", "kancodec", "encode", "--help"], capture_output=True, text=True, timeout=120)
    for opt in ("--output", "--force", "--steps", "--bits", "--device", "--quiet", "--preset"):
        assert opt in res.stdout


def test_ogg_and_stereo_flac_in(tmp_path):
    sr = 16000
    t = np.arange(sr // 4) / sr
    ogg = tmp_path / "a.ogg"
    sf.write(ogg, 0.5 * np.sin(2 * np.pi * 220 * t), sr, format="OGG", subtype="VORBIS")
    assert cli("encode", ogg, "-o", tmp_path / "a.kan", "-q", *TINY_ARGS).exit_code == 0
    flac = tmp_path / "b.flac"
    sf.write(flac, np.stack([np.sin(2 * np.pi * 220 * t), np.sin(2 * np.pi * 330 * t)], 1) * 0.3, sr)
    assert cli("encode", flac, "-o", tmp_path / "b.kan", "-q", *TINY_ARGS).exit_code == 0
    doc = json.loads(cli("info", tmp_path / "b.kan", "--json").stdout)
    assert doc["audio"]["channels"] == 2 and doc["audio"]["sample_rate"] == sr
    assert cli("decode", tmp_path / "b.kan", "-o", tmp_path / "b.wav", "-q").exit_code == 0
    assert sf.info(tmp_path / "b.wav").channels == 2 and sf.info(tmp_path / "b.wav").frames == len(t)
