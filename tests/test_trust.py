"""Trust boundaries (issue 18): what a file, a model folder, a signal or a command line can make kancodec do.

Covered, each through the command line (in-process, or as ``python -m kancodec`` where the
behaviour lives in the program's entry point):

* model names stored in autoencoder ``.kan`` files are names only: a relative or absolute path,
  ``/``, a 10,000-character name, Rich markup, a newline with a forged ``error:`` line or a
  terminal escape is refused (exit 4, one line, nothing forged, no raw control characters), the
  model file such a path points at is never opened, an existing and a missing path get the same
  answer (no existence oracle), and ``info`` shows such names escaped;
* model files: the checksum (version 2) covers the metadata; a user model with the bundled
  model's name but other content does not stop files made with the bundled model from decoding;
  a model with the right SHA-256 serves under any name; files over 1 GiB are refused unread;
* ``--force`` replaces only regular files: never a FIFO, a device node or the input itself (by
  its own name, a hard link or a symbolic link);
* SIGTERM during a fit is handled like Ctrl-C (exit 143, one message, no temporary files);
* option values that cannot work stop with exit 2 and one line naming the flag, before any
  output is written (infinite, huge or NaN ``--lr``, huge ``--steps``/``--seed``, zero rates,
  windows and codebooks, output rates out of range); a diverged fit is not written; ``eval`` of a 1-sample file is one line;
  Click's own parse errors are one line pointing at ``--help``; a ``.kan`` file whose
  ``sample_rate`` is 0 is a file error (exit 4), not blamed on ``--sr``.

Every fit is tiny (``TINY_ARGS``) or fails before fitting; the autoencoder files are 0.2 s of
speech coded with the bundled KAN-RVQ.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from dataclasses import replace

import numpy as np
import pytest
import soundfile as sf
import torch

import kancodec
from kancodec import fitqueue, inrcodec, modelfile
from kancodec.cli import run as cli_main
from kancodec.cli.common import EXIT_CODES
from kancodec.errors import FormatError, InputError, OptionError, OutputError
from conftest import TINY_ARGS, TINY_ENCODE, assert_one_line_error, cli, leftovers, rewrite_metadata

BUNDLED_KRVQ = modelfile.BUNDLED_DIR / "krvq.safetensors"
# the exit code of each kind of error, as the CLI maps them (OptionError through KanError: 2)
FORMAT, INPUT, OPTION, OUTPUT = (next(c for k, c in EXIT_CODES.items() if issubclass(t, k))
                                 for t in (FormatError, InputError, OptionError, OutputError))
# model names a crafted file may hold, none of which is a model name
CRAFTED_NAMES = {
    "absolute": "/etc/passwd",
    "root": "/",
    "long": "a" * 10_000,
    "markup": "[/x]",
    "forged-line": "krvq\nerror: forged",
    "escape": "krvq\x1b[31m",
    "file-name": "krvq.safetensors",
    "bidi": "krvq\u202e",
}


def assert_clean(res) -> None:
    """No traceback and no raw terminal escape or control character in anything printed."""
    text = res.stdout + res.stderr
    assert "Traceback" not in text, text
    assert not any(ch in text for ch in "\x1b\r\x07\x08\u202e"), repr(text)
    assert not isinstance(res.exception, Exception) or isinstance(res.exception, SystemExit), repr(res.exception)


def refused(res, code: int, *words: str) -> None:
    assert_one_line_error(res, code, *words)
    assert_clean(res)


@pytest.fixture(autouse=True)
def user_models(tmp_path, monkeypatch):
    """An empty stand-in for the user's model folder, so the real one plays no part."""
    folder = tmp_path / "user_models"
    folder.mkdir()
    monkeypatch.setattr(modelfile, "user_models_dir", lambda: folder)
    return folder


@pytest.fixture(scope="module")
def clip(speech) -> tuple[np.ndarray, int]:
    """0.2 s of the bundled speech clip at 22.05 kHz, mono."""
    x, sr = speech
    return np.ascontiguousarray(x[:, 22050:22050 + 4410]), sr


@pytest.fixture(scope="module")
def ae_bytes(clip) -> bytes:
    """A ``.kan`` file of the clip coded with the bundled KAN-RVQ (named ``krvq``)."""
    x, sr = clip
    af = kancodec.encode(x, sr, ae=BUNDLED_KRVQ, device="cpu")
    assert af.model["name"] == "krvq" and af.model["sha256"] == modelfile.BUNDLED["krvq.safetensors"]
    return af.to_bytes()


@pytest.fixture(scope="module")
def inr_bytes(clip) -> bytes:
    """A tiny INR ``.kan`` file of the clip at 8 kHz (5 fitting steps)."""
    from kancodec.audio import resample

    x, sr = clip
    return kancodec.encode(resample(x, sr, 8000), 8000, **{**TINY_ENCODE, "steps": 5}).to_bytes()


@pytest.fixture()
def ae_kan(tmp_path, ae_bytes):
    p = tmp_path / "ae.kan"
    p.write_bytes(ae_bytes)
    return p


def with_model_name(data: bytes, name: str) -> bytes:
    """The ``.kan`` file with another model name and its checksum recomputed, as a crafter would."""
    def change(meta):
        model = json.loads(meta["kancodec.model"])
        model["name"] = name
        meta["kancodec.model"] = json.dumps(model)
    return rewrite_metadata(data, change)


@pytest.fixture()
def reads(monkeypatch):
    """Every file read through ``Path.read_bytes`` (how model files are read), resolved."""
    seen: list[pathlib.Path] = []
    real = pathlib.Path.read_bytes

    def spy(self):
        seen.append(self.resolve())
        return real(self)
    monkeypatch.setattr(pathlib.Path, "read_bytes", spy)
    return seen


# (1) model names in files are names, never paths


def test_relative_path_as_model_name_is_refused_and_not_opened(tmp_path, ae_bytes, user_models, reads, monkeypatch):
    """``../../../../x/neg`` reaches a real copy of the model (right SHA-256) from the working
    folder and from the model folder; it must be refused, and the copy never read."""
    crafted_dir = tmp_path / "x"
    crafted_dir.mkdir()
    shutil.copy(BUNDLED_KRVQ, crafted_dir / "neg.safetensors")
    deep_user = tmp_path / "u" / "v" / "w" / "models"  # ../../../../ of it is tmp_path too
    deep_user.mkdir(parents=True)
    monkeypatch.setattr(modelfile, "user_models_dir", lambda: deep_user)
    cwd = tmp_path / "a" / "b" / "c" / "d"
    cwd.mkdir(parents=True)
    monkeypatch.chdir(cwd)
    kan = tmp_path / "neg.kan"
    kan.write_bytes(with_model_name(ae_bytes, "../../../../x/neg"))
    res = cli("decode", kan, "-o", tmp_path / "neg.wav")
    refused(res, FORMAT, "not a model name")
    assert not (tmp_path / "neg.wav").exists()
    assert not [p for p in reads if crafted_dir in p.parents], reads


@pytest.mark.parametrize("key", CRAFTED_NAMES)
def test_crafted_model_name_is_refused_in_one_clean_line(tmp_path, ae_bytes, key):
    kan = tmp_path / "c.kan"
    kan.write_bytes(with_model_name(ae_bytes, CRAFTED_NAMES[key]))
    res = cli("decode", kan, "-o", tmp_path / "c.wav")
    refused(res, FORMAT, "not a model name")
    assert len(res.stderr) < 400, len(res.stderr)  # a long name is cut short, not printed whole
    assert not (tmp_path / "c.wav").exists()


def test_model_path_in_file_gives_no_existence_oracle(tmp_path, ae_bytes):
    """A path that exists (even a real model with the right SHA-256) and one of the same length
    that does not are answered alike: both are not model names, and the two messages differ
    only where the names do."""
    (tmp_path / "x").mkdir()
    shutil.copy(BUNDLED_KRVQ, tmp_path / "x" / "real.safetensors")
    pairs = [("/etc/passwd", "/etc/passwx"),
             (str(tmp_path / "x" / "real.safetensors"), str(tmp_path / "x" / "reax.safetensors")),
             (str(tmp_path / "x" / "real"), str(tmp_path / "x" / "reax"))]
    kan = tmp_path / "p.kan"
    for existing, missing in pairs:
        answers = []
        for path in (existing, missing):
            kan.write_bytes(with_model_name(ae_bytes, path))
            res = cli("decode", kan, "-o", tmp_path / "p.wav")
            refused(res, FORMAT, "not a model name")
            answers.append(res.stderr)
        a, b = answers
        assert len(a) == len(b) and sum(x != y for x, y in zip(a, b)) <= 1, answers
    assert not (tmp_path / "p.wav").exists()


@pytest.mark.parametrize("key", CRAFTED_NAMES)
def test_info_shows_crafted_model_names_escaped(tmp_path, ae_bytes, key):
    name = CRAFTED_NAMES[key]
    kan = tmp_path / "c.kan"
    kan.write_bytes(with_model_name(ae_bytes, name))
    res = cli("info", kan)
    assert res.exit_code in (0, FORMAT), (res.exit_code, res.output, res.exception)
    assert_clean(res)
    assert not any(line.strip().startswith("error:") for line in res.stdout.splitlines()), res.stdout
    if res.exit_code == 0 and len(name) < 50:
        # shown as text, escaped: markup stays literal, control characters as \x.. escapes
        shown = name.encode("unicode_escape").decode() if not name.isprintable() else name
        assert shown in res.stdout, (shown, res.stdout)
    js = cli("info", kan, "--json")
    assert js.exit_code in (0, FORMAT) and "Traceback" not in js.output
    if js.exit_code == 0:
        assert json.loads(js.stdout)["model"]["name"] == name  # JSON escapes it itself, exactly


FORGED = "fast\nerror: forged\x1b[31m[/x]\r"


def _forge_encode_fields(meta) -> None:
    """Every text field of ``kancodec.encode`` (preset, device, version) a forged line."""
    enc = json.loads(meta["kancodec.encode"])
    meta["kancodec.encode"] = json.dumps({k: FORGED if isinstance(v, str) else v for k, v in enc.items()})


@pytest.mark.parametrize("codec", ["ae", "inr"])
def test_info_escapes_free_text_from_the_file(tmp_path, ae_bytes, inr_bytes, codec):
    kan = tmp_path / "c.kan"
    kan.write_bytes(rewrite_metadata(ae_bytes if codec == "ae" else inr_bytes, _forge_encode_fields))
    res = cli("info", kan)
    assert res.exit_code in (0, FORMAT), (res.exit_code, res.output, res.exception)
    assert_clean(res)
    assert not any(line.strip().startswith("error:") for line in res.stdout.splitlines()), res.stdout


# (2) model files: checksum over metadata, lookup by hash


def _other_model(path: pathlib.Path) -> None:
    """A working model file at ``path`` that differs from the bundled KAN-RVQ in one weight."""
    config, tensors, train = modelfile.read_model(BUNDLED_KRVQ, "ae")
    key = next(k for k, v in tensors.items() if v.is_floating_point())
    tensors = {**tensors, key: tensors[key] + 0.01}
    modelfile.save_model(path, "ae", config, tensors, train)


def test_user_model_with_the_bundled_name_does_not_block_bundled_files(tmp_path, ae_kan, user_models):
    _other_model(user_models / "krvq.safetensors")
    res = cli("decode", ae_kan, "-o", tmp_path / "out.wav", "--quiet")
    assert res.exit_code == 0, res.output
    assert sf.info(tmp_path / "out.wav").frames == 4410


def test_a_model_with_the_right_hash_serves_under_any_name(tmp_path, ae_kan, user_models, monkeypatch):
    """No bundled models; the user's ``krvq`` is another model; a copy of the right one under
    another name is found by its SHA-256."""
    monkeypatch.setattr(modelfile, "BUNDLED_DIR", tmp_path / "no-bundled-models")
    _other_model(user_models / "krvq.safetensors")
    shutil.copy(BUNDLED_KRVQ, user_models / "renamed.safetensors")
    res = cli("decode", ae_kan, "-o", tmp_path / "out.wav", "--quiet")
    assert res.exit_code == 0, res.output
    # without the copy: a model of that name exists but is another one, a file error
    (user_models / "renamed.safetensors").unlink()
    refused(cli("decode", ae_kan, "-o", tmp_path / "out2.wav"), FORMAT, "krvq", "different model")
    assert not (tmp_path / "out2.wav").exists()


def test_model_file_checksum_covers_its_metadata(tmp_path):
    config, tensors, train = modelfile.read_model(BUNDLED_KRVQ, "ae")
    path = tmp_path / "m.safetensors"
    modelfile.save_model(path, "ae", config, tensors, train)
    modelfile.read_model(path, "ae")  # as written: fine

    def retrain(meta):
        meta["kancodec.train"] = json.dumps({"steps_done": 1, "note": "not how it was trained"})
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(rewrite_metadata(path.read_bytes(), retrain, rehash=False))
    with pytest.raises(FormatError, match="checksum mismatch"):
        modelfile.read_model(bad, "ae")


def test_oversized_model_files_are_refused_unread(tmp_path, ae_kan, user_models, monkeypatch):
    """A sparse file just over 1 GiB: refused by --model PATH without reading it, and skipped
    (not read) when it lies in the model folder."""
    real = pathlib.Path.read_bytes
    big = tmp_path / "big.safetensors"
    big_user = user_models / "big.safetensors"
    for p in (big, big_user):
        with open(p, "wb") as f:
            f.truncate(getattr(modelfile, "MAX_MODEL_BYTES", 1 << 30) + 1)

    def guarded(self):
        assert self.resolve() not in (big.resolve(), big_user.resolve()), f"read {self}"
        return real(self)
    monkeypatch.setattr(pathlib.Path, "read_bytes", guarded)
    refused(cli("decode", ae_kan, "-o", tmp_path / "a.wav", "--model", big), FORMAT, "too large")
    assert not (tmp_path / "a.wav").exists()
    res = cli("decode", ae_kan, "-o", tmp_path / "b.wav", "--quiet")
    assert res.exit_code == 0, (res.output, res.exception)


# (3) --force replaces regular files only, never the input


def test_force_does_not_replace_a_fifo(tmp_path, ae_kan):
    fifo = tmp_path / "out.wav"
    os.mkfifo(fifo)
    refused(cli("decode", ae_kan, "-o", fifo, "--force"), OUTPUT, "not a regular file")
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert leftovers(tmp_path) == []


def test_force_does_not_replace_a_device_node(tmp_path, ae_kan):
    node = tmp_path / "out.wav"
    try:
        os.mknod(node, stat.S_IFCHR | 0o600, os.makedev(1, 7))
    except (PermissionError, OSError) as e:
        pytest.skip(f"cannot make a device node here ({e})")
    refused(cli("decode", ae_kan, "-o", node, "--force"), OUTPUT, "not a regular file")
    assert stat.S_ISCHR(os.lstat(node).st_mode)
    assert leftovers(tmp_path) == []


def test_force_does_not_write_over_the_input(tmp_path, speech_wav):
    before = speech_wav.read_bytes()
    refused(cli("encode", speech_wav, "-o", speech_wav, "--force", "--ae", "krvq"), OUTPUT, "is the input")
    alias = tmp_path / "alias.wav"  # the same file under another name
    os.link(speech_wav, alias)
    refused(cli("encode", speech_wav, "-o", alias, "--force", "--ae", "krvq"), OUTPUT, "is the input")
    link = tmp_path / "link.wav"  # and through a symbolic link
    link.symlink_to(speech_wav)
    refused(cli("encode", speech_wav, "-o", link, "--force", "--ae", "krvq"), OUTPUT, "is the input")
    assert link.is_symlink()
    assert speech_wav.read_bytes() == before
    assert leftovers(tmp_path) == []


# (4) SIGTERM is Ctrl-C


def test_sigterm_during_a_fit_cleans_up(tmp_path, speech_wav):
    """A real ``python -m kancodec encode`` with a fit of 100,000 steps, sent SIGTERM once it fits."""
    out = tmp_path / "out.kan"
    cmd = [sys.executable, "-m", "kancodec", "encode", str(speech_wav), "-o", str(out), *TINY_ARGS, "--steps", "100000"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    lines: list[str] = []
    fitting = threading.Event()

    def read():
        for line in proc.stderr:
            lines.append(line)
            if line.startswith("fitting"):
                fitting.set()
    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert fitting.wait(90), f"no 'fitting' line; stderr: {''.join(lines)!r}, exit {proc.poll()}"
        time.sleep(1.0)  # well into the fitting steps
        assert proc.poll() is None, "".join(lines)
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
        reader.join(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    err = "".join(lines)
    assert code == 143, (code, err)
    assert "terminated; nothing was written" in err and "Traceback" not in err, err
    assert not out.exists()
    assert leftovers(tmp_path) == []


# (5) options that must stop, and one-line errors


@pytest.mark.parametrize("args, flag", [
    (("--lr", "inf"), "--lr"),
    (("--lr", "1e30"), "--lr"),
    (("--lr", "nan"), "--lr"),
    (("--steps", "1000000000000"), "--steps"),
    (("--seed", "1" * 20), "--seed"),
    (("--fit-sr", "0"), "--fit-sr"),
    (("--chunk", "0"), "--chunk"),
    (("--lr", "0"), "--lr"),
    (("--steps", "-1"), "--steps"),
    (("--seed", "-1"), "--seed"),
    (("--chunk", "100000000000000"), "--chunk"),  # not a MemoryError while cutting windows
    (("--chunk", str((1 << 20) + 1)), "--chunk"),  # not a file its own reader refuses
], ids=["lr-inf", "lr-1e30", "lr-nan", "steps-1e12", "seed-20-digits", "fit-sr-0", "chunk-0", "lr-0", "steps-neg",
        "seed-neg", "chunk-1e14", "chunk-above-file-limit"])
def test_fit_settings_that_cannot_work_stop_before_fitting(tmp_path, speech_wav, args, flag):
    out = tmp_path / "out.kan"
    refused(cli("encode", speech_wav, "-o", out, *TINY_ARGS, *args), OPTION, flag)
    assert not out.exists() and leftovers(tmp_path) == []


def test_refine_beyond_the_bound_stops(tmp_path, speech_wav):
    out = tmp_path / "out.kan"
    refused(cli("encode", speech_wav, "-o", out, "--hyper", "fewsound-kan", "--refine", "1000000000000"), OPTION,
            "--refine")
    assert not out.exists()


def test_zero_codebooks_is_not_all_codebooks(tmp_path, speech_wav):
    out = tmp_path / "out.kan"
    refused(cli("encode", speech_wav, "-o", out, "--ae", "krvq", "--codebooks", "0"), OPTION, "--codebooks")
    assert not out.exists()


@pytest.mark.parametrize("rate", ["0", "-8000", "1000000000"])
def test_decode_at_impossible_rates_is_refused(tmp_path, ae_kan, rate):
    out = tmp_path / "out.wav"
    refused(cli("decode", ae_kan, "-o", out, "--sr", rate), OPTION, "--sr")
    assert not out.exists()


def test_a_diverged_fit_is_not_written(tmp_path, speech_wav, monkeypatch):
    real = fitqueue.fit

    def diverging(*a, **k):
        result = real(*a, **k)
        return replace(result, params={n: torch.full_like(v, float("nan")) for n, v in result.params.items()})
    monkeypatch.setattr(fitqueue, "fit", diverging)
    out = tmp_path / "out.kan"
    refused(cli("encode", speech_wav, "-o", out, "--quiet", *TINY_ARGS), OPTION, "diverged", "--lr")
    assert not out.exists() and leftovers(tmp_path) == []


def test_eval_of_a_one_sample_file_is_one_line(tmp_path):
    one = tmp_path / "one.wav"
    sf.write(one, np.array([0.25]), 8000)
    refused(cli("eval", one, one), INPUT, "nothing to compare")


@pytest.fixture()
def program(monkeypatch, capsys):
    """Run ``kancodec ARGS`` through its entry point, in-process -> ``(exit code, stdout, stderr)``;
    the SIGTERM handler it installs is put back afterwards."""
    handler = signal.getsignal(signal.SIGTERM)

    def call(*args):
        monkeypatch.setattr(sys, "argv", ["kancodec", *args])
        capsys.readouterr()
        with pytest.raises(SystemExit) as stop:
            cli_main()
        out = capsys.readouterr()
        return stop.value.code, out.out, out.err
    yield call
    signal.signal(signal.SIGTERM, handler)


@pytest.mark.parametrize("args, words", [
    (("encode", "x.wav", "--steps", "abc"), ("--steps",)),
    (("encode", "x.wav", "--no-such-option"), ("--no-such-option",)),
    (("encode", "x.wav", "--lr"), ("--lr",)),
    (("decode",), ("input",)),
], ids=["not-a-number", "unknown-option", "missing-value", "missing-argument"])
def test_click_parse_errors_are_one_line(program, args, words):
    code, out, err = program(*args)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and out == "", (code, out, err)
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    assert lines[0].endswith(f"see 'kancodec {args[0]} --help'"), lines[0]
    for w in words:
        assert w in lines[0], (w, lines[0])


def test_python_dash_m_parse_error_is_one_line(tmp_path):
    res = subprocess.run([sys.executable, "-m", "kancodec", "encode", "x.wav", "--steps", "abc"], capture_output=True,
                         text=True, timeout=120, cwd=tmp_path)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode == 2 and len(lines) == 1, (res.returncode, res.stderr)
    assert lines[0].startswith("error:") and "--steps" in lines[0] and "see 'kancodec encode --help'" in lines[0]


def _zero_rate(meta) -> None:
    audio = json.loads(meta["kancodec.audio"])
    audio["sample_rate"] = 0
    meta["kancodec.audio"] = json.dumps(audio)


@pytest.mark.parametrize("codec, command", [
    ("ae", "decode"), ("ae", "info"),
    ("inr", "decode"), ("inr", "info"),
])
def test_zero_sample_rate_in_a_file_is_a_file_error(tmp_path, ae_bytes, inr_bytes, codec, command):
    kan = tmp_path / "sr0.kan"
    kan.write_bytes(rewrite_metadata(ae_bytes if codec == "ae" else inr_bytes, _zero_rate))
    out = tmp_path / "sr0.wav"
    res = cli("decode", kan, "-o", out) if command == "decode" else cli("info", kan)
    refused(res, FORMAT)
    assert "--sr" not in res.stderr
    assert not out.exists()
