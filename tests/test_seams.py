"""The codec seam: one registry, one reader, library errors in parameter names, no import
cycles, no global state touched, and a wheel that carries its models."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import kancodec
from kancodec import hyper, kanfile, modelfile
from kancodec.codec import Codec, Encoded
from kancodec.errors import OptionError
from kancodec.inr import KANConfig
from conftest import assert_one_line_error, cli

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).parent / "data"
TINY_HYPER = hyper.HyperConfig(target=KANConfig(n_freqs=4, hidden=(8,), grid=5).to_dict(), window=4096,
                               channels=(4, 8), strides=(8, 8), frame_channels=4, latent=16, theta_hidden=8, hidden=32)


def test_every_fixture_reads_through_its_codec():
    """Each committed .kan fixture finds its codec by tag; the codec's file type, describe and
    brief agree with the file."""
    tags = set()
    for path in sorted(DATA.glob("*.kan")):
        kf = kanfile.load(path)
        codec = kanfile.codec_for(kf)
        assert isinstance(codec, Codec) and isinstance(kf, codec.file_type) and isinstance(kf, Encoded)
        assert kanfile.CODECS[kf.TAG] is codec
        doc = codec.describe(kf, path.stat().st_size)
        assert doc["format"] == kf.TAG and doc["bytes"] == path.stat().st_size
        assert codec.brief(kf)["label"]
        assert [row[0] for row in codec.summary(kf, path.stat().st_size)]
        tags.add(kf.TAG)
    assert tags == set(kanfile.CODECS)  # the fixtures cover every registered codec


def test_option_errors_name_parameters_in_the_library_and_flags_on_the_command_line(speech_wav, tmp_path):
    with pytest.raises(OptionError, match="^refine needs hyper") as e:
        kancodec.encode(speech_wav, refine=10)
    assert "--" not in str(e.value)
    assert e.value.render(lambda n: "--" + n.replace("_", "-")).startswith("--refine needs --hyper")
    res = cli("encode", speech_wav, "-o", tmp_path / "x.kan", "--refine", "10")
    assert_one_line_error(res, 2, "--refine needs --hyper")
    with pytest.raises(OptionError, match=r"^codebooks needs ae MODEL \(e\.g\. ae krvq\)"):
        kancodec.encode(speech_wav, codebooks=2)
    with pytest.raises(OptionError, match="drop steps, fit_sr"):
        kancodec.encode(speech_wav, ae="krvq", steps=5, fit_sr=16000)
    res = cli("encode", speech_wav, "-o", tmp_path / "x.kan", "--ae", "krvq", "--fit-sr", "16000")
    assert_one_line_error(res, 2, "drop --fit-sr")
    assert not (tmp_path / "x.kan").exists()
    # braces that are not parameter names are left as they are
    assert str(OptionError("{x} and {not_a_name}", "x")) == "x and {not_a_name}"


def test_models_command_lists_the_bundled_models(tmp_path, monkeypatch):
    monkeypatch.setattr(modelfile, "user_models_dir", lambda: tmp_path / "none")
    res = cli("models", "--json")
    assert res.exit_code == 0, res.output
    rows = {m["name"]: m for m in json.loads(res.stdout)}
    assert rows["fewsound-kan"]["kind"] == "hyper" and rows["krvq"]["kind"] == "ae"
    for name, row in rows.items():
        assert row["where"] == "bundled" and Path(row["path"]).parent == modelfile.BUNDLED_DIR
        assert row["sha256"] == modelfile.BUNDLED[f"{name}.safetensors"] == modelfile.file_sha256(row["path"])
    # a model of the user's own is listed first
    users = tmp_path / "mine"
    users.mkdir()
    monkeypatch.setattr(modelfile, "user_models_dir", lambda: users)
    hyper.save(hyper.HyperNetwork(TINY_HYPER), users / "tiny.safetensors")
    names = [m["name"] for m in json.loads(cli("models", "--json").stdout)]
    assert names[0] == "tiny" and {"fewsound-kan", "krvq"} <= set(names)


def test_building_a_hypernetwork_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    hyper.HyperNetwork(TINY_HYPER)
    assert torch.equal(torch.rand(3), expected)


def _imports(path: Path, package: str) -> set[str]:
    """The kancodec modules a file imports, at any level (function-level imports included)."""
    module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    if path.name == "__init__.py":
        module = module.rsplit(".", 1)[0]
        base = module.split(".")
    else:
        base = module.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith(package)}
        elif isinstance(node, ast.ImportFrom):
            parts = base[: len(base) - node.level + 1] if node.level else []
            target = ".".join(parts + ([node.module] if node.module else []))
            if not target.startswith(package):
                continue
            for a in node.names:  # "from . import x" imports the module x
                sub = f"{target}.{a.name}"
                found.add(sub if (ROOT / (sub.replace(".", "/") + ".py")).exists()
                          or (ROOT / sub.replace(".", "/")).is_dir() else target)
    return found - {module}


def test_no_import_cycles():
    files = sorted((ROOT / "kancodec").rglob("*.py"))
    graph = {}
    for f in files:
        name = ".".join(f.relative_to(ROOT).with_suffix("").parts)
        graph[name.removesuffix(".__init__")] = _imports(f, "kancodec")
    state: dict[str, int] = {}

    def visit(node, stack):
        state[node] = 1
        for dep in sorted(graph.get(node, ())):
            if dep == "kancodec" or node == "kancodec":  # the package's re-exports
                continue
            if state.get(dep) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(dep):] + [dep]))
            if dep not in state:
                visit(dep, stack + [dep])
        state[node] = 2

    assert len(graph) > 20
    for node in graph:
        if node not in state:
            visit(node, [node])


@pytest.mark.skipif(os.environ.get("KANCODEC_SKIP_WHEEL") == "1", reason="KANCODEC_SKIP_WHEEL=1")
def test_wheel_carries_the_models_and_runs_from_outside_the_checkout(tmp_path, speech):
    """``pip wheel .`` -> a fresh venv (torch etc. from the system) -> ``--hyper`` and
    ``--ae krvq`` work from another folder, with the installed package, not the checkout."""
    wheels = tmp_path / "wheels"
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation",
                        "-q", "-w", str(wheels)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    wheel = next(wheels.glob("kancodec-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"kancodec/models/fewsound-kan.safetensors", "kancodec/models/krvq.safetensors",
            "kancodec/cli/__init__.py", "kancodec/data/demo_speech.flac"} <= names
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    r = subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--force-reinstall", str(wheel)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    work = tmp_path / "elsewhere"
    work.mkdir()
    x, sr = speech
    import soundfile as sf
    sf.write(work / "clip.wav", x[0, 20000:24096], sr)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["XDG_DATA_HOME"] = str(tmp_path / "xdg")  # no user models
    where = subprocess.run([str(py), "-c", "import kancodec, sys; print(kancodec.__file__)"], cwd=work,
                           capture_output=True, text=True, env=env, timeout=120)
    assert where.stdout.strip().startswith(str(venv)), where.stdout + where.stderr
    exe = str(venv / "bin" / "kancodec")
    for args in (["--hyper"], ["--ae", "krvq"]):
        r = subprocess.run([exe, "encode", "clip.wav", "-o", "c.kan", "--force", "--device", "cpu", *args], cwd=work,
                           capture_output=True, text=True, env=env, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        r = subprocess.run([exe, "decode", "c.kan", "-o", "c.wav", "--force", "--device", "cpu"], cwd=work,
                           capture_output=True, text=True, env=env, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        y, rate = sf.read(work / "c.wav")
        assert rate == sr and len(y) == 4096 and np.isfinite(y).all()


def test_cli_bench_speed_prints_its_table():
    res = cli("bench", "speed", "--steps", "1", "--compile", "no", "--device", "cpu")
    assert res.exit_code == 0, res.output
    assert "33,768 params" in res.stdout and "window-steps/s" in res.stdout
    assert_one_line_error(cli("bench", "speed", "--windows", "0,x"), 2, "--windows '0,x'", "1,8,64")


def test_cli_train_hyper(corpus, tmp_path):
    """The command line of training a hypernetwork, at the smallest settings."""
    out = tmp_path / "h.safetensors"
    args = ["train-hyper", "--data", corpus, "-o", out, "--steps", "2", "--batch", "1", "--loss-window", "1024",
            "--val-every", "2", "--checkpoint-every", "2", "--compile", "no", "--device", "cpu"]
    res = cli(*args)
    assert res.exit_code == 0, res.output
    assert out.is_file() and hyper.load(out)[1].train["steps_done"] == 2
    assert_one_line_error(cli(*args), 5, "--force")  # the model is not overwritten without --force


def test_cli_bench_hyper(corpus, tmp_path):
    """bench hyper on a tiny model: the report's parts are there and finite."""
    out = tmp_path / "h.safetensors"
    hyper.save(hyper.HyperNetwork(TINY_HYPER), out, {"steps_done": 2})
    report = tmp_path / "b.json"
    res = cli("bench", "hyper", corpus, "--model", out, "--clips", "1", "--refine", "1", "--max-steps", "1",
              "--device", "cpu", "--json", report)
    assert res.exit_code == 0, res.output
    doc = json.loads(report.read_text())
    assert doc["clips"] == 1 and Path(doc["model"]).name == "h.safetensors" and doc["train_steps"] == 2
    assert doc["refine"]["steps"] == doc["random_same_steps"]["steps"] == 1
    assert np.isfinite(doc["refine"]["snr"]) and doc["encode_10s_seconds"] > 0
    assert_one_line_error(cli("bench", "hyper", corpus, "--clips", "0"), 2, "--clips")


def test_cli_bench_toy(tmp_path):
    report = tmp_path / "toy.json"
    res = cli("bench", "toy", "--steps", "2", "--seeds", "1", "--json", report)
    assert res.exit_code == 0, res.output
    doc = json.loads(report.read_text())
    assert len(doc["kan"]) == len(doc["mlp"]) == 1 and "kan: test MSE" in res.stdout
    assert_one_line_error(cli("bench", "toy", "--seeds", "a"), 2, "--seeds")
