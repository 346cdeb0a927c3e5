"""Files written before the codec-interface refactor (commit ab00ff8, see tests/data/README.md)
still decode as that commit decoded them: same rate and shape everywhere, the same samples
within float16 storage of the reference on any machine, and bit-identical samples on a machine
whose hashes were recorded with that commit's code (float sums round differently on other CPUs)."""

from __future__ import annotations

import hashlib
import json
import platform
from pathlib import Path

import numpy as np
import pytest
import torch

import kancodec

DATA = Path(__file__).parent / "data"
FIXTURES = json.loads((DATA / "fixtures.json").read_text())
REFERENCE = np.load(DATA / "decoded-ab00ff8.npz")  # each file at its own rate, as float16
#: float16 keeps |y| < 1 to within half a step of 2**-11 (2.4e-4); measured: at most 1.2e-4 here
TOLERANCE = 5e-4


def machine() -> str:
    """What float rounding depends on: CPU, its SIMD level, torch's version."""
    cpu = "?"
    try:
        cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), cpu)
    except OSError:
        pass
    return f"{platform.machine()} {cpu} {torch.backends.cpu.get_cpu_capability()} torch {torch.__version__.split('+')[0]}"


MACHINES = FIXTURES["machines"]
EXPECTED = next(iter(MACHINES.values()))  # rates, shapes and dtypes are the same on every machine


@pytest.fixture()
def same_threads():
    """Sums over threads round differently: decode with the thread count the hashes were made with."""
    before = torch.get_num_threads()
    torch.set_num_threads(FIXTURES["threads"])
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_old_files_decode_as_before(name, same_threads):
    hashes = MACHINES.get(machine())
    for rate, want in EXPECTED[name].items():
        y, sr = kancodec.decode(DATA / name, sr=None if rate == "None" else int(rate), device="cpu", compile=False)
        assert {"sr": sr, "shape": list(y.shape), "dtype": str(y.dtype)} == {k: want[k] for k in ("sr", "shape", "dtype")}
        if rate == "None":
            ref = REFERENCE[name].astype(np.float32)
            assert float(np.abs(y - ref).max()) <= TOLERANCE, f"{name}: decode moved away from the reference"
        if hashes is not None:
            assert hashlib.sha256(np.ascontiguousarray(y).tobytes()).hexdigest() == hashes[name][rate]["sha256"], \
                f"{name} at {rate}: not bit-identical to commit ab00ff8's decode on this machine"


def test_the_reference_tolerance_catches_a_small_change(same_threads):
    """The float16 comparison is not blind: one window's gain changed by 1 % is caught."""
    kf = kancodec.load(DATA / "inr-kan-8bit.kan")
    kf.tensors["gain"] = kf.tensors["gain"].copy()
    kf.tensors["gain"][0] *= 1.01
    y, _ = kancodec.decode(kf, device="cpu", compile=False)
    assert float(np.abs(y - REFERENCE["inr-kan-8bit.kan"].astype(np.float32)).max()) > TOLERANCE


INFO = json.loads((DATA / "info.json").read_text())


@pytest.mark.parametrize("name", sorted(INFO))
def test_old_files_info_json_unchanged(name):
    from typer.testing import CliRunner

    from kancodec.cli import app

    res = CliRunner().invoke(app, ["info", "--json", str(DATA / name)])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    # the additions since: what the checksum of these version 1 files covered, and (INR
    # files) the quantisation scheme and the stored bits per weight
    assert doc.pop("checksum") == "tensors only (version 1 file)"
    if doc["format"] == "kancodec-inr":
        assert doc.pop("quant") == "affine-per-row" and doc.pop("bits_per_weight") == doc["bits"]
    assert doc == INFO[name]
