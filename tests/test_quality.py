"""``kancodec bench quality`` end to end on two tiny clips: table, reports, resume, sweeps, errors."""

import json

import numpy as np
import pytest
import soundfile as sf

from conftest import assert_one_line_error, cli

ARGS = ["--steps", "3", "--length", "11025", "--device", "cpu", "--opus", "24"]


@pytest.fixture()
def clips(tmp_path, speech):
    """Two real speech clips (0.6 s at 22.05 kHz) and one too short to use, in a nested folder."""
    x, sr = speech
    folder = tmp_path / "data" / "speaker"
    folder.mkdir(parents=True)
    sf.write(folder / "a.wav", x[0, 11025:11025 + 13230], sr)
    sf.write(folder / "b.flac", x[0, 33075:33075 + 13230], sr)
    sf.write(tmp_path / "data" / "short.wav", x[0, :1000], sr)
    return tmp_path / "data"


def test_bench_quality_end_to_end_and_resume(tmp_path, clips, monkeypatch):
    out = tmp_path / "out"
    res = cli("bench", "quality", clips, "--arch", "kan,siren", *ARGS, "--out", out)
    assert res.exit_code == 0, res.output
    assert "2 clips" in res.stderr and "1 skipped" in res.stderr
    for name in ("kan", "siren", "opus 24 kbps", "mu-law 8 bit"):
        assert name in res.stdout
    lines = (out / "results.jsonl").read_text().splitlines()
    assert json.loads(lines[0])["settings"]["steps"] == 3 and len(lines) == 1 + 4 * 2
    summary = json.loads((out / "summary.json").read_text())
    rows = {r["variant"]: r for r in summary["summary"]}
    assert rows["kan"]["params"] == 33768 and rows["siren"]["params"] == 30601
    assert rows["mu-law 8 bit"]["kbps"] == pytest.approx(8 * 22.05, rel=0.02)
    assert rows["mu-law 8 bit"]["pesq"] > 3.5 and rows["mu-law 8 bit"]["si_snr"] > 20  # 8-bit mu-law is good
    from kancodec import inr

    stored = sum(np.prod(v) for v in inr.stored_shapes(inr.make_config("kan")).values())
    weights_kbps = stored * 8 / (11025 / 22050) / 1000  # the weights at 8 bits each, fixed-length
    assert 0.3 * weights_kbps < rows["kan"]["kbps"] < weights_kbps  # entropy-coded: below fixed-length 8 bits
    md = (out / "summary.md").read_text()
    assert "| kan | 33,768 |" in md and "PESQ" in md
    assert (out / "summary.csv").read_text().startswith("variant,")

    # A second run with the same settings fits nothing: every row is already there.
    import kancodec.api

    def boom(*a, **k):
        raise AssertionError("refitted a finished row")

    monkeypatch.setattr(kancodec.api, "encode", boom)
    res = cli("bench", "quality", clips, "--arch", "kan,siren", *ARGS, "--out", out)
    assert res.exit_code == 0, res.output
    assert len((out / "results.jsonl").read_text().splitlines()) == len(lines)


def test_bench_quality_refuses_results_made_with_other_settings(tmp_path, clips):
    out = tmp_path / "out"
    args = ["--arch", "kan", "--steps", "2", "--length", "4096", "--device", "cpu", "--opus", "", "--no-mulaw"]
    assert cli("bench", "quality", clips, *args, "--out", out, "-q").exit_code == 0
    other = [a if a != "2" else "4" for a in args]
    assert_one_line_error(cli("bench", "quality", clips, *other, "--out", out), 5, "other settings", "--fresh")
    assert cli("bench", "quality", clips, *other, "--out", out, "--fresh", "-q").exit_code == 0


def test_bench_quality_sweep(tmp_path, clips):
    out = tmp_path / "out"
    # every family is asked for; only kan has a grid, so only kan is swept
    res = cli("bench", "quality", clips, "--sweep", "grid=3,5", "--steps", "2", "--length", "4096",
              "--device", "cpu", "--opus", "", "--no-mulaw", "--limit", "1", "--out", out)
    assert res.exit_code == 0, res.output
    rows = {r["variant"]: r for r in json.loads((out / "summary.json").read_text())["summary"]}
    assert set(rows) == {"kan grid=3", "kan grid=5"}
    assert rows["kan grid=3"]["params"] < rows["kan grid=5"]["params"] and rows["kan grid=3"]["clips"] == 1


@pytest.mark.parametrize("args, code, words", [
    (["--sweep", "colour=1,2"], 2, ["--sweep", "grid"]),
    (["--sweep", "grid=a,b"], 2, ["--sweep", "int"]),
    (["--arch", "kan,transformer"], 2, ["transformer", "siren"]),
    (["--sweep", "grid=3", "--arch", "siren"], 2, ["grid", "siren"]),
    (["--opus", "x"], 2, ["--opus"]),
    (["--bits", "9"], 2, ["--bits 9"]),
])
def test_bench_quality_bad_options(tmp_path, clips, args, code, words):
    assert_one_line_error(cli("bench", "quality", clips, *args, "--out", tmp_path / "o"), code, *words)
    assert not (tmp_path / "o").exists()


def test_bench_quality_bad_folders(tmp_path, clips):
    (tmp_path / "empty").mkdir()
    assert_one_line_error(cli("bench", "quality", tmp_path / "empty"), 3, "no .wav")
    assert_one_line_error(cli("bench", "quality", tmp_path / "nope"), 3, "not a directory")
    assert_one_line_error(cli("bench", "quality", clips, "--length", "100000"), 3, "100000 samples")
