"""Threads chosen by measurement (kancodec.threads) and the benchmark that checks it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from kancodec import threads
from conftest import assert_one_line_error, cli


@pytest.fixture()
def governor(monkeypatch):
    """A fresh auto governor of at most 2 threads on a fake machine: ``machine["busy"]`` and
    ``machine["own"]`` are the busy seconds of the CPUs and of this process, ``machine["t"]`` the clock."""
    machine = {"t": 100.0, "busy": 0.0, "own": 0.0}
    monkeypatch.setattr(threads, "_busy_seconds", lambda cpus: machine["busy"])
    monkeypatch.setattr(threads, "_own_seconds", lambda: machine["own"])
    monkeypatch.setattr(threads.time, "monotonic", lambda: machine["t"])
    monkeypatch.delenv("KANCODEC_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    g = threads.Governor()
    yield g, machine
    torch.set_num_threads(before)


def advance(machine, seconds: float, own_cores: float, other_cores: float) -> None:
    machine["t"] += seconds
    machine["own"] += own_cores * seconds
    machine["busy"] += (own_cores + other_cores) * seconds


def test_policy():
    assert threads.choose(2, 0.0) == 2 and threads.choose(2, 0.25) == 2
    assert threads.choose(2, 0.5) == 1 and threads.choose(2, 1.0) == 1 and threads.choose(2, 3.0) == 1
    assert threads.choose(8, 1.0) == 7 and threads.choose(8, 2.2) == 6 and threads.choose(1, 0.0) == 1


def test_governor_follows_what_other_processes_use(governor):
    g, machine = governor
    advance(machine, 3, own_cores=2.0, other_cores=0.0)  # alone: both cores are ours
    assert g.update() == 2 and torch.get_num_threads() == 2
    advance(machine, 3, own_cores=1.3, other_cores=0.7)  # another process takes most of a core
    assert g.update() == 1 and torch.get_num_threads() == 1 and g.other == pytest.approx(0.7)
    advance(machine, 0.5, own_cores=1.0, other_cores=0.0)  # too soon to measure again
    assert g.update() == 1
    advance(machine, 3, own_cores=1.0, other_cores=0.05)  # it stopped
    assert g.update() == 2 and torch.get_num_threads() == 2


def test_governor_leaves_a_fixed_or_foreign_choice_alone(governor):
    g, machine = governor
    g.set(1)
    advance(machine, 3, own_cores=1.0, other_cores=0.0)
    assert g.update() == 1  # --threads 1 holds
    g.set("auto")
    assert torch.get_num_threads() == 2
    torch.set_num_threads(2)
    g.chosen = 2
    torch.set_num_threads(1)  # the program using kancodec chose for itself
    advance(machine, 3, own_cores=1.0, other_cores=0.0)
    assert g.update() == 1


def test_threads_option_and_environment():
    for value in ("0", "many"):
        r = subprocess.run([sys.executable, "-m", "kancodec", "bench", "speed", "--threads", value],
                           capture_output=True, text=True, timeout=120)
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:"), r.stderr
        assert f"--threads': '{value}'" in lines[0] and "auto" in lines[0]
    code = "import kancodec, torch; print(torch.get_num_threads(), kancodec.threads.GOVERNOR.fixed)"
    one = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "KANCODEC_THREADS": "1"}, timeout=120)
    assert one.stdout.split() == ["1", "1"], one.stderr
    bad = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "KANCODEC_THREADS": "lots"}, timeout=120)
    assert bad.returncode == 0 and "KANCODEC_THREADS 'lots'" in bad.stderr and bad.stdout.split()[1] == "None"


def test_bench_speed_measures_idle_and_busy_against_the_reference(tmp_path):
    out = tmp_path / "speed.json"
    res = cli("bench", "speed", "--steps", "1", "--compile", "no", "--device", "cpu", "--busy", "0,1", "--json", out)
    assert res.exit_code == 0, res.output
    import json

    rows = json.loads(out.read_text())["rows"]
    assert [r["busy"] for r in rows] == [0, 1]
    assert "fit_x_idle" in rows[1] and rows[0]["reference_forward_s"] > 0 and rows[1]["decode_x_reference"] > 0
    from kancodec import threads
    if threads.GOVERNOR.fixed is None and threads.GOVERNOR.max >= 2:  # the process it started is another program's
        assert rows[1]["threads"] <= threads.GOVERNOR.max - 1, rows
    assert_one_line_error(cli("bench", "speed", "--busy", "-1"), 2, "--busy", "0,1")


def test_reference_forward_is_the_same_network():
    from kancodec import inr
    from kancodec.bench import reference_forward

    cfg = inr.KANConfig(n_freqs=6, hidden=(12, 8), grid=5, order=2)
    p = inr.init_params(cfg, 1, seed=3)
    p["l0.spline"] = p["l0.spline"] * 30  # splines that matter
    t = torch.linspace(-1, 1, 3000)
    assert torch.allclose(reference_forward(cfg, p, t)[:, 0], inr.forward(cfg, p, t)[0], atol=1e-4)


def test_gpu_check_dry_run(tmp_path):
    """tests/gpu/run.sh --dry-run: the GPU check's whole path on the CPU at toy sizes."""
    script = os.path.join(os.path.dirname(__file__), "gpu", "run.sh")
    r = subprocess.run(["bash", script, "--dry-run", str(tmp_path)], capture_output=True, text=True,
                       env={**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}, timeout=600)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    import json

    result = json.loads((tmp_path / "gpu.json").read_text())
    assert result["dry_run"] and result["encode"]["real_time_factor"] > 0 and result["speed"][0]["step_s"] > 0
    assert "GPU-marked tests" in (tmp_path / "tests.txt").read_text()
    assert_one_line_error(cli("bench", "gpu", "--device", "cpu"), 2, "needs a CUDA GPU", "--dry-run")


def test_own_cpu_includes_live_child_processes():
    """torch.compile's workers are kancodec's own work: a busy child is not 'another program'."""
    import subprocess
    import sys
    import time

    from kancodec import threads

    before = threads._own_seconds()
    child = subprocess.Popen([sys.executable, "-c", "import time\nt = time.time()\nwhile time.time() - t < 1.2: pass\n"
                              "time.sleep(30)"])
    try:
        time.sleep(1.6)
        assert threads._own_seconds() - before >= 0.5
        threads.FOREIGN.add(child.pid)  # unless it stands for another program
        assert threads._descendant_seconds() < 0.5
    finally:
        child.kill()
        child.wait()
        threads.FOREIGN.discard(child.pid)
