"""``kancodec bench rd``: real kbps from bytes, the Opus/MP3 searches, resume, reports, errors.

The INR fit is stubbed where only the bookkeeping is under test (``rdbench.encode`` /
``rdbench.decode``), and is a real tiny fit (2 steps, tiny KAN, no kbps) where the real
``.kan`` bytes matter, so the file runs in seconds on a CPU.
"""

import io
import json

import numpy as np
import pytest
import soundfile as sf

from conftest import TINY, assert_one_line_error, cli
from kancodec import rdbench

SR = 22050
LENGTH = 8192  # 0.37 s: long enough for PESQ and STOI, short enough to be quick
ARGS = ["--length", LENGTH, "--steps", 2, "--device", "cpu"]


@pytest.fixture()
def clips(tmp_path, speech):
    """Two speech clips and one too short to use."""
    x, sr = speech
    folder = tmp_path / "data"
    folder.mkdir()
    sf.write(folder / "a.wav", x[0, 11025:11025 + 9000], sr)
    sf.write(folder / "b.flac", x[0, 33075:33075 + 9000], sr)
    sf.write(folder / "short.wav", x[0, :1000], sr)
    return folder


class FakeKan:
    """What ``encode`` returns, as far as the bench looks: bytes and the audio to decode."""

    def __init__(self, audio, size):
        self.audio, self.size = audio, size

    def to_bytes(self):
        return b"\0" * self.size


@pytest.fixture()
def fake_inr(monkeypatch):
    """encode -> a file of 3x the requested size (so an assumed rate would be caught), decode -> clip + noise."""
    calls = []

    def encode(x, sr, kbps, steps, device, progress=None):
        calls.append(kbps)
        return FakeKan(x, int(3 * kbps * 1000 / 8 * len(x) / sr))

    def decode(kf, device=None):
        rng = np.random.default_rng(0)
        return (kf.audio + 0.01 * rng.standard_normal(len(kf.audio))).astype(np.float32)[None], SR

    monkeypatch.setattr(rdbench, "encode", encode)
    monkeypatch.setattr(rdbench, "decode", decode)
    return calls


def test_inr_kbps_is_measured_from_the_bytes(tmp_path, clips, fake_inr):
    out = tmp_path / "out"
    res = cli("bench", "rd", clips, *ARGS, "--kbps", "24,48", "--opus", "", "--mp3", "", "--no-mulaw", "--no-flac",
              "-o", out)
    assert res.exit_code == 0, res.output
    assert fake_inr == [24, 24, 48, 48]
    doc = json.loads((out / "rd.json").read_text())
    points = {p["name"]: p for p in doc["points"]}
    for k in (24, 48):
        p = points[f"inr {k} kbps"]
        assert p["kbps_requested"] == k and p["clips"] == 2
        assert p["kbps"] == pytest.approx(3 * k, rel=1e-3)  # what the bytes say, not what was asked
        for row in p["per_clip"]:
            assert row["kbps"] == pytest.approx(row["bytes"] * 8 / (LENGTH / SR) / 1000)
        assert p["mean"]["si_snr"] > 10 and p["n"]["pesq"] == 2
        assert p["mean"]["pesq"] == pytest.approx(np.mean([r["pesq"] for r in p["per_clip"]]))


def test_real_tiny_fit_counts_the_whole_kan_file(clips, monkeypatch):
    from kancodec import api

    made = []

    def tiny(x, sr, kbps, steps, device, progress=None):  # kbps is the codec's own business; not tested here
        made.append(api.encode(x, sr, steps=steps, device=device, config=TINY, chunk=2048, overlap=128, compile=False))
        return made[-1]

    monkeypatch.setattr(rdbench, "encode", tiny)
    from kancodec.quality import load_clips

    loaded, skipped = load_clips(clips, SR, LENGTH, None)
    assert len(loaded) == 2 and skipped == ["short.wav"]
    plan = rdbench.RdPlan([], 2, SR, LENGTH)
    row = rdbench.run_point(rdbench.make_points([24], [], [], False, False)[0], loaded[0], plan, "cpu")
    assert row["bytes"] == len(made[0].to_bytes()) and row["kbps"] == pytest.approx(row["bytes"] * 8 / (LENGTH / SR) / 1000)
    assert set(rdbench.RD_METRICS) <= set(row)


@pytest.mark.skipif("MP3" not in sf.available_formats(), reason="this libsndfile has no MP3 writer")
def test_mp3_search_lands_near_the_request_on_measured_sizes(speech):
    x = speech[0][0, 11025:11025 + 32768]
    seconds = len(x) / SR
    sizes = []
    for kbps in (32, 64):
        y, size, setting = rdbench._mp3(x, SR, kbps)
        again = rdbench.mp3_bytes(x, setting["rate"], setting["bitrate_mode"], setting["compression_level"])
        assert size == len(again)  # the size reported is the file that setting writes
        assert abs(size * 8 / seconds / 1000 - kbps) < 0.1 * kbps
        assert y.shape == x.shape and np.corrcoef(x, y)[0, 1] > 0.95  # decoded, aligned
        sizes.append(size)
    assert sizes[0] < sizes[1]


def test_opus_mulaw_flac_sizes_are_the_files(speech):
    x = speech[0][0, 11025:11025 + LENGTH]
    plan = rdbench.RdPlan([], 2, SR, LENGTH)
    from kancodec.quality import Clip

    clip = Clip("a", np.ascontiguousarray(x))
    pts = {p.codec: p for p in rdbench.make_points([], [24], [], True, True)}
    buf = io.BytesIO()
    sf.write(buf, x, SR, format="FLAC", subtype="PCM_16")
    flac = rdbench.run_point(pts["flac"], clip, plan)
    assert flac["bytes"] == len(buf.getvalue()) > LENGTH  # 16-bit speech: over 8 bits a sample and flac["lossless"] and "pesq" not in flac
    buf = io.BytesIO()
    sf.write(buf, x, SR, format="WAV", subtype="ULAW")
    assert rdbench.run_point(pts["mulaw"], clip, plan)["bytes"] == len(buf.getvalue())
    opus = rdbench.run_point(pts["opus"], clip, plan)
    assert opus["kbps"] == pytest.approx(opus["bytes"] * 8 / (LENGTH / SR) / 1000) and opus["pesq"] > 1


def test_outputs_and_resume_skip_done_points(tmp_path, clips, fake_inr, monkeypatch):
    out = tmp_path / "out"
    has_mp3 = "MP3" in sf.available_formats()

    def run(kbps="24", *extra):
        return cli("bench", "rd", clips, *ARGS, "--kbps", kbps, "--opus", "24", "--mp3", "32" if has_mp3 else "",
                   "-o", out, *extra)

    res = run()
    assert res.exit_code == 0, res.output
    assert "2 clips" in res.stderr and "1 skipped" in res.stderr
    for name in ("inr 24 kbps", "opus 24 kbps", "mu-law 8 bit", "flac", "lossless"):
        assert name in res.stdout
    lines = (out / "results.jsonl").read_text().splitlines()
    assert json.loads(lines[0])["settings"] == {"bench": "rd", "steps": 2, "sr": SR, "length": LENGTH}
    assert len(lines) == 1 + 2 * (5 if has_mp3 else 4)
    md = (out / "rd.md").read_text()
    assert "| inr 24 kbps | 24 |" in md and "PESQ" in md and "| flac | - |" in md
    doc = json.loads((out / "rd.json").read_text())
    assert [p["codec"] for p in doc["points"]][:2] == ["inr", "opus"] and doc["skipped"] == ["short.wav"]
    flac = next(p for p in doc["points"] if p["codec"] == "flac")
    assert flac["lossless"] and flac["kbps"] > 100
    if rdbench.can_plot():
        assert (out / "rd.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # Run again with one more INR point: only that point is encoded, nothing else is redone.
    fake_inr.clear()

    def boom(*a, **k):
        raise AssertionError("redid a finished point")

    for name in ("_opus", "_mp3", "_mulaw", "_flac"):
        monkeypatch.setattr(rdbench, name, boom)
    res = run("24,48")
    assert res.exit_code == 0, res.output
    assert fake_inr == [48, 48]
    assert len((out / "results.jsonl").read_text().splitlines()) == len(lines) + 2
    assert "inr 48 kbps" in (out / "rd.md").read_text()

    # Other settings: refused in one line until --fresh.
    assert_one_line_error(run("24", "--steps", "3"), 5, "other settings", "--fresh")


def test_an_interrupted_run_resumes(tmp_path, clips, fake_inr, monkeypatch):
    out = tmp_path / "out"
    args = [clips, *ARGS, "--kbps", "24", "--opus", "", "--mp3", "", "--no-flac", "-o", out]
    real = rdbench._mulaw

    def stop(*a):
        raise KeyboardInterrupt

    monkeypatch.setattr(rdbench, "_mulaw", stop)
    assert cli("bench", "rd", *args).exit_code == 130
    assert len((out / "results.jsonl").read_text().splitlines()) == 1 + 2  # the INR rows were kept
    monkeypatch.setattr(rdbench, "_mulaw", real)
    fake_inr.clear()
    assert cli("bench", "rd", *args, "-q").exit_code == 0
    assert fake_inr == [] and len((out / "results.jsonl").read_text().splitlines()) == 1 + 4


def test_a_refused_inr_bitrate_is_reported_not_fatal(tmp_path, clips, monkeypatch):
    from kancodec.errors import OptionError

    def refuse(x, sr, kbps, steps, device, progress=None):
        raise OptionError("{kbps} 2 is too low for this network", "kbps")

    monkeypatch.setattr(rdbench, "encode", refuse)
    out = tmp_path / "out"
    res = cli("bench", "rd", clips, *ARGS, "--kbps", "2", "--opus", "", "--mp3", "", "--no-flac", "-o", out)
    assert res.exit_code == 0, res.output
    assert "could not run" in res.stderr and "too low" in res.stderr
    doc = json.loads((out / "rd.json").read_text())
    assert "too low" in doc["points"][0]["error"] and doc["points"][1]["clips"] == 2
    assert len((out / "results.jsonl").read_text().splitlines()) == 1 + 2  # the failed point is tried again next time


@pytest.mark.parametrize("option, value", [("--kbps", "24,abc"), ("--kbps", "-5"), ("--kbps", "nan"),
                                           ("--opus", "0"), ("--mp3", "x")])
def test_bad_bitrates_are_one_line_errors(tmp_path, clips, option, value):
    assert_one_line_error(cli("bench", "rd", clips, option, value, "-o", tmp_path / "out"), 2, option)
    assert not (tmp_path / "out").exists()


def test_empty_folder_and_nothing_to_measure(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_one_line_error(cli("bench", "rd", empty, "-o", tmp_path / "out"), 3, "no .wav")
    assert_one_line_error(cli("bench", "rd", empty, "--kbps", "", "--opus", "", "--mp3", "", "--no-mulaw",
                              "--no-flac"), 2, "nothing to measure")
