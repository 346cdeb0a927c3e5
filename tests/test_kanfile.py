import json
import struct

import numpy as np
import pytest

import kancodec
from kancodec import kanfile
from kancodec.errors import FormatError, InputError
from conftest import TINY_ENCODE


@pytest.fixture(scope="module")
def kf(tmp_path_factory):
    x = np.sin(np.linspace(0, 200, 3000)).astype(np.float32) * 0.3
    return kancodec.encode(x, sr=8000, **{**TINY_ENCODE, "steps": 3})


def _rewrite_metadata(data: bytes, change) -> bytes:
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    change(header["__metadata__"])
    new = json.dumps(header).encode()
    new += b" " * (-len(new) % 8)
    return struct.pack("<Q", len(new)) + new + data[8 + n:]


def test_roundtrip_keeps_everything(kf, tmp_path):
    p = tmp_path / "a.kan"
    size = kancodec.save(kf, p)
    assert size == p.stat().st_size
    back = kancodec.load(p)
    assert back.config == kf.config and back.audio == kf.audio and back.bits == kf.bits
    assert set(back.tensors) == set(kf.tensors)
    for k in kf.tensors:
        assert np.array_equal(back.tensors[k], kf.tensors[k])
    assert back.encode["settings"]["steps"] == 3


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        kancodec.load(tmp_path / "nope.kan")


def test_truncated_file(kf, tmp_path):
    data = kf.to_bytes()
    for cut in (4, 50, len(data) // 2, len(data) - 1):
        with pytest.raises(FormatError, match="truncated"):
            kanfile.from_bytes(data[:cut])


def test_not_a_kan_file():
    with pytest.raises(FormatError):
        kanfile.from_bytes(b"RIFF" + b"\0" * 100)


def test_tampered_tensor_bytes_fail_the_checksum(kf):
    data = bytearray(kf.to_bytes())
    data[-3] ^= 0xFF
    with pytest.raises(FormatError, match="checksum mismatch"):
        kanfile.from_bytes(bytes(data))


def test_unknown_version(kf):
    data = _rewrite_metadata(kf.to_bytes(), lambda m: m.update({"kancodec.version": "99"}))
    with pytest.raises(FormatError, match="version 99 is not supported.*upgrade kancodec"):
        kanfile.from_bytes(data)


def test_wrong_tag(kf):
    data = _rewrite_metadata(kf.to_bytes(), lambda m: m.update({"kancodec.format": "other"}))
    with pytest.raises(FormatError, match="not a kancodec file"):
        kanfile.from_bytes(data)


def test_config_that_disagrees_with_the_tensors(kf):
    def widen(m):
        cfg = json.loads(m["kancodec.inr"])
        cfg["hidden"] = [16, 8]
        m["kancodec.inr"] = json.dumps(cfg)
    with pytest.raises(FormatError, match="the config needs"):
        kanfile.from_bytes(_rewrite_metadata(kf.to_bytes(), widen))


def test_missing_metadata(kf):
    data = _rewrite_metadata(kf.to_bytes(), lambda m: m.pop("kancodec.audio"))
    with pytest.raises(FormatError, match="'kancodec.audio' is missing"):
        kanfile.from_bytes(data)


def test_bitrate_is_from_the_real_size(kf):
    assert kf.kbps() == pytest.approx(kf.size_bytes() * 8 / kf.audio.duration / 1000)
    assert kf.pcm_kbps() == 8000 * 16 / 1000
