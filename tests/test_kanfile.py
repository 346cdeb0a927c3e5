import json

import numpy as np
import pytest

import kancodec
from safetensors.numpy import load as st_load

from kancodec import container, kanfile
from kancodec.errors import FormatError, InputError
from conftest import TINY_ENCODE, rewrite_metadata, version2


@pytest.fixture(scope="module")
def kf(tmp_path_factory):
    x = np.sin(np.linspace(0, 200, 3000)).astype(np.float32) * 0.3
    return kancodec.encode(x, sr=8000, **{**TINY_ENCODE, "steps": 3})


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


def test_edited_metadata_fails_the_checksum(kf):
    """Since version 2 the checksum covers the metadata: a changed sample rate is refused."""
    v2 = version2(kf)

    def halve(m):
        audio = json.loads(m["kancodec.audio"])
        audio["sample_rate"] //= 2
        m["kancodec.audio"] = json.dumps(audio)
    assert b'"kancodec.version":"2"' in v2[:4000]
    for data in (v2, kf.to_bytes()):  # version 2 and today's compact version 3
        with pytest.raises(FormatError, match="checksum mismatch"):
            kanfile.from_bytes(rewrite_metadata(data, halve, rehash=False))
    # a version 1 file (tensors-only checksum) with the same edit is read, and says so
    old = rewrite_metadata(v2, lambda m: m.update({"kancodec.version": "1"}), rehash=False)
    old = rewrite_metadata(old, lambda m: m.update({"kancodec.sha256": container.checksum(st_load(old))}), rehash=False)
    with pytest.raises(FormatError, match="fit_frames"):  # the schema still sees the inconsistency
        kanfile.from_bytes(rewrite_metadata(old, halve, rehash=False))

    def double(m):  # a consistent edit: what only the version 2 checksum catches
        audio = json.loads(m["kancodec.audio"])
        audio["sample_rate"] *= 2
        audio["frames"] *= 2
        m["kancodec.audio"] = json.dumps(audio)
    for data in (v2, kf.to_bytes()):
        with pytest.raises(FormatError, match="checksum mismatch"):
            kanfile.from_bytes(rewrite_metadata(data, double, rehash=False))
    back = kanfile.from_bytes(rewrite_metadata(old, double, rehash=False))
    assert back.audio.sample_rate == kf.audio.sample_rate * 2 and not back.metadata_checked
    assert kancodec.describe(back)["checksum"] == "tensors only (version 1 file)"
    assert kancodec.describe(kf)["checksum"] == "metadata and tensors"


def test_unknown_version(kf):
    data = rewrite_metadata(kf.to_bytes(), lambda m: m.update({"kancodec.version": "99"}))
    with pytest.raises(FormatError, match="version 99 is not supported.*upgrade kancodec"):
        kanfile.from_bytes(data)


def test_wrong_tag(kf):
    data = rewrite_metadata(kf.to_bytes(), lambda m: m.update({"kancodec.format": "other"}))
    with pytest.raises(FormatError, match="not a kancodec file"):
        kanfile.from_bytes(data)


def test_config_that_disagrees_with_the_tensors(kf):
    def widen(m):
        cfg = json.loads(m["kancodec.inr"])
        cfg["hidden"] = [16, 8]
        m["kancodec.inr"] = json.dumps(cfg)
    with pytest.raises(FormatError, match="the config needs"):  # version 2: the tensor shapes disagree
        kanfile.from_bytes(rewrite_metadata(version2(kf), widen))
    with pytest.raises(FormatError, match="damaged"):  # version 3: the coded stream does not fit it
        kanfile.from_bytes(rewrite_metadata(kf.to_bytes(), widen))


def test_missing_metadata(kf):
    data = rewrite_metadata(kf.to_bytes(), lambda m: m.pop("kancodec.audio"))
    with pytest.raises(FormatError, match="'kancodec.audio' is missing"):
        kanfile.from_bytes(data)


def test_bitrate_is_from_the_real_size(kf):
    assert kf.kbps() == pytest.approx(kf.size_bytes() * 8 / kf.audio.duration / 1000)
    assert kf.pcm_kbps() == 8000 * 16 / 1000
