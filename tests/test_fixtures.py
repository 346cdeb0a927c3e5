"""Files written before the codec-interface refactor (commit ab00ff8, see tests/data/README.md)
still decode bit-identically: same samples, same rate, same shape."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import kancodec

DATA = Path(__file__).parent / "data"
FIXTURES = json.loads((DATA / "fixtures.json").read_text())
EXPECTED = FIXTURES["files"]


@pytest.fixture()
def same_threads():
    """Sums over threads round differently: decode with the thread count the hashes were made with."""
    before = torch.get_num_threads()
    torch.set_num_threads(FIXTURES["threads"])
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_old_files_decode_bit_identically(name, same_threads):
    for rate, want in EXPECTED[name].items():
        y, sr = kancodec.decode(DATA / name, sr=None if rate == "None" else int(rate), device="cpu", compile=False)
        got = {"sr": sr, "shape": list(y.shape), "dtype": str(y.dtype),
               "sha256": hashlib.sha256(np.ascontiguousarray(y).tobytes()).hexdigest()}
        assert got == want, f"{name} at {rate}"


INFO = json.loads((DATA / "info.json").read_text())


@pytest.mark.parametrize("name", sorted(INFO))
def test_old_files_info_json_unchanged(name):
    from typer.testing import CliRunner

    from kancodec.cli import app

    res = CliRunner().invoke(app, ["info", "--json", str(DATA / name)])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout) == INFO[name]
