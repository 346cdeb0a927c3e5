"""Pipes and batches: ``encode -``, ``decode -o -``, many files in one process, torchrun."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import kancodec
from kancodec import batch
from kancodec.fitqueue import FitQueue
from kancodec.inrcodec import CODEC
from conftest import TINY, TINY_ARGS, assert_one_line_error, cli, leftovers

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def run(*args, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    """The real program, with real standard streams."""
    return subprocess.run([sys.executable, "-m", "kancodec", *map(str, args)], input=stdin, capture_output=True,
                          env=ENV, timeout=300)


@pytest.fixture()
def folder(tmp_path, speech) -> Path:
    """Two speech clips (one in a subfolder), and one file that is not audio."""
    x, sr = speech
    root = tmp_path / "in"
    (root / "sub").mkdir(parents=True)
    sf.write(root / "a.wav", x[0, 20000:28000], sr)
    sf.write(root / "sub" / "b.flac", x[0, 40000:45000], sr)
    (root / "broken.wav").write_bytes(b"RIFF, but not really")
    return root


def test_stdin_to_stdout_and_back(tmp_path, speech_wav):
    kan = run("encode", "-", "-o", "-", *TINY_ARGS, "--quiet", stdin=speech_wav.read_bytes())
    assert kan.returncode == 0, kan.stderr.decode()[-2000:]
    assert kan.stdout[:3] == b"KAN"  # nothing but the file on stdout
    wav = run("decode", "-", "-o", "-", stdin=kan.stdout)
    assert wav.returncode == 0, wav.stderr.decode()[-2000:]
    assert wav.stdout[:4] == b"RIFF" and b"wrote WAV to standard output" in wav.stderr
    (tmp_path / "piped.wav").write_bytes(wav.stdout)
    y, rate = sf.read(tmp_path / "piped.wav")
    x, sr = sf.read(speech_wav)
    assert rate == sr and y.shape == x.shape
    # the same networks as from the file itself
    (tmp_path / "piped.kan").write_bytes(kan.stdout)
    direct, _ = kancodec.decode(tmp_path / "piped.kan")
    assert np.abs(direct[0] - y).max() < 1e-4


def test_stdin_needs_an_output_and_audio(tmp_path):
    assert_one_line_error(cli("encode", "-", *TINY_ARGS), 2, "standard input", "-o")
    bad = run("encode", "-", "-o", tmp_path / "x.kan", *TINY_ARGS, stdin=b"")
    assert bad.returncode == 3 and b"standard input is empty" in bad.stderr and not (tmp_path / "x.kan").exists()
    assert_one_line_error(cli("decode", "-"), 2, "standard input", "-o")


def test_a_failed_decode_to_stdout_writes_nothing(tmp_path):
    r = run("decode", "-", "-o", "-", stdin=b"KAN\x03 damaged")
    assert r.returncode == 4 and r.stdout == b""


def test_folder_encode_with_a_broken_file(folder, tmp_path):
    out = tmp_path / "out"
    res = cli("encode", folder, "-o", out, *TINY_ARGS)
    assert res.exit_code == 3, res.output  # the one failure's code
    assert (out / "a.kan").is_file() and (out / "sub" / "b.kan").is_file() and not (out / "broken.kan").exists()
    assert "2 encoded, 0 skipped, 1 failed" in res.stderr
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "broken.wav" in errors[0] and "not a readable audio file" in errors[0]
    assert leftovers(out) == [] and leftovers(out / "sub") == []
    # again: both outputs exist, so both are skipped; --force redoes them. Files given by
    # name are written under their own name, not their folder's path.
    (folder / "broken.wav").unlink()
    again = cli("encode", folder, "-o", out, *TINY_ARGS)
    assert again.exit_code == 0 and "0 encoded, 2 skipped, 0 failed" in again.stderr
    forced = cli("encode", folder / "a.wav", folder / "sub" / "b.flac", "-o", out, "--force", *TINY_ARGS)
    assert forced.exit_code == 0 and "2 encoded, 0 skipped" in forced.stderr
    assert kancodec.load(out / "b.kan").audio.frames == 5000


def test_batch_outputs_are_checked_before_any_work(folder, tmp_path):
    (tmp_path / "x").mkdir()
    sf.write(tmp_path / "x" / "a.wav", np.zeros(800), 8000)
    assert_one_line_error(cli("encode", folder / "a.wav", tmp_path / "x" / "a.wav", "-o", tmp_path / "o", *TINY_ARGS),
                          2, "would both be written to")
    (tmp_path / "file.kan").write_bytes(b"")
    assert_one_line_error(cli("encode", folder, "-o", tmp_path / "file.kan", *TINY_ARGS), 2, "folder to write")
    assert_one_line_error(cli("encode", folder, tmp_path / "nothing", "-o", tmp_path / "o", *TINY_ARGS), 3,
                          "nothing", "no such file or folder")
    assert not (tmp_path / "o").exists()


def test_windows_of_different_files_share_batches_without_changing_results(speech):
    """One queue fits the windows of two files together; each file comes out as it does alone.
    File ``a`` is fitted at a lowered rate (its fifth window would hold 92 new samples, see
    :func:`kancodec.audio.tile_rate`) and still shares the batch with ``b``, fitted at the input's."""
    x, sr = speech
    # 4 + 2 windows: with a batch of 5 the float rounding of the batched products differs
    # from a batch of 2, and this 20-step fit of b (SI-SNR -9 dB) drifts by 0.2 dB (measured)
    a, b = x[:, 20000:27900], x[:, 40000:43000]
    opts = dict(config=TINY, chunk=2048, overlap=128, steps=20, bits=8)
    jobs = [CODEC.plan(c, sr, device=kancodec.resolve_device("cpu"), **opts) for c in (a, b)]
    assert jobs[0].fit_sr < sr == jobs[1].fit_sr
    windows = [len(j.w.active) for j in jobs]
    queue = FitQueue(kancodec.resolve_device("cpu"), compile=False, batch=sum(windows))
    assert queue.add(jobs[0]) == [] and queue.add(jobs[1]) == jobs  # one batch held both files
    assert queue.batches == 1
    together = [CODEC.finish(j, False, 0.0) for j in jobs]
    alone = [kancodec.encode(c, sr, device="cpu", compile=False, **opts) for c in (a, b)]
    for t, s in zip(together, alone):
        yt, _ = kancodec.decode(t)
        ys, _ = kancodec.decode(s)
        assert abs(t.encode["si_snr_db"] - s.encode["si_snr_db"]) < 0.05
        assert np.abs(yt - ys).max() < 0.01


def test_exit_code_of_a_batch():
    items = [batch.Item("a", "a.kan", "encoded"), batch.Item("b", "b.kan", "failed", code=3)]
    assert batch.batch_exit_code(items) == 3
    assert batch.batch_exit_code(items + [batch.Item("c", "c.kan", "failed", code=2)]) == 1
    assert batch.batch_exit_code(items[:1]) == 0


def test_torchrun_shares_a_folder_between_two_processes(folder, tmp_path):
    """torchrun with two CPU processes (gloo): each file encoded once, one summary from rank 0."""
    (folder / "broken.wav").unlink()
    out = tmp_path / "out"
    with socket.socket() as sock:  # a free port for the rendezvous
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", port,
                        "-m", "kancodec", "encode", str(folder), "-o", str(out), *TINY_ARGS],
                       capture_output=True, text=True, env=ENV, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (out / "a.kan").is_file() and (out / "sub" / "b.kan").is_file()
    assert r.stderr.count("kancodec encode") == 1 and "shared among 2 processes" in r.stderr
    assert "2 encoded, 0 skipped, 0 failed" in r.stderr


@pytest.mark.gpu
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_fits_every_window_of_a_long_file_in_one_batch(speech):
    x, sr = speech
    long = np.tile(x, (1, 8))  # ~24 s: 17 windows
    plans = []
    kf = kancodec.encode(long, sr, steps=3, device="cuda", progress=lambda ev: plans.append(ev.info) if ev.stage == "plan" else None)
    assert plans[0]["batches"] == 1 and plans[0]["active"] == kf.audio.windows
