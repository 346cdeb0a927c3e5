"""Seeded fuzzing of the .kan reader (issue 14): a few hundred damaged and crafted files, each
of which must be refused (exit 4, one ``error:`` line, no output file) or decode exactly as
the untouched file does; none may raise a traceback, hang or allocate without bound. A
crafted file whose checksum was recomputed (the checksum is not a signature) may also be a
different valid file: then it decodes, within the schema's bounds."""

from __future__ import annotations

import json
import os
import random
import resource
import struct
import time
from pathlib import Path

import numpy as np
import pytest

import hashlib
import zlib

import kancodec
from kancodec import container
from conftest import TINY_ENCODE, cli, rewrite_compact, rewrite_metadata, version2

#: the suite's seed and case count; KANCODEC_FUZZ_SEED / KANCODEC_FUZZ_CASES run others (longer hunts)
SEED = int(os.environ.get("KANCODEC_FUZZ_SEED", "14"))
CASES = int(os.environ.get("KANCODEC_FUZZ_CASES", "300"))
#: values a crafter tries in any field (JSON can carry NaN and infinities)
ODD = [0, -1, 1, 2, 3, 7, 255, 256, 2**31, 2**63, 10**12, -10**9, 1.5, 0.0, float("nan"), float("inf"),
       float("-inf"), None, True, False, "", "16000", "x" * 10_000, "../../../etc/passwd", "[/x]", "a\nerror: forged",
       "\x1b[31m", [], [1], [1.0, -1.0], [0, 0, 0], {}, {"a": 1}]
#: high-water memory the whole fuzz run may add (measured: about 25 MB on top of the suite's own)
MEMORY_MB = 500
#: the slowest single case may take (measured: under 0.5 s on an idle 2-core machine)
SECONDS = 20


def changed(a: bytes, b: bytes) -> dict:
    if container.is_compact(a):
        try:
            ma, mb = container._read_compact(a, "a", None)[0], container._read_compact(b, "b", None)[0]
        except Exception as e:  # noqa: BLE001 - only for the failure message
            return {"unreadable": str(e)}
    else:
        ma, mb = header(a)[0].get("__metadata__", {}), header(b)[0].get("__metadata__", {})
    return {k: (ma.get(k), mb.get(k)) for k in set(ma) | set(mb) if ma.get(k) != mb.get(k) and k != "kancodec.sha256"}


def header(data: bytes) -> tuple[dict, bytes]:
    n = struct.unpack("<Q", data[:8])[0]
    return json.loads(data[8:8 + n]), data[8 + n:]


def with_header(h: dict, body: bytes) -> bytes:
    raw = json.dumps(h).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + body


def paths_in(value, prefix=()):
    """Every (path, value) inside a JSON value, objects and lists alike."""
    yield prefix, value
    if isinstance(value, dict):
        for k, v in value.items():
            yield from paths_in(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from paths_in(v, prefix + (i,))


def set_in(value, path, new):
    for key in path[:-1]:
        value = value[key]
    value[path[-1]] = new


def craft_metadata(rng: random.Random, rehash: bool):
    """A change to one metadata field (anywhere in its JSON), or a whole entry replaced or removed."""
    def change(meta):
        key = rng.choice(sorted(k for k in meta if k != "kancodec.sha256"))
        roll = rng.random()
        if roll < 0.1:
            meta.pop(key)
            return
        if roll < 0.2:
            meta[key] = rng.choice(["", "{", "[]", "null", json.dumps(rng.choice(ODD)), "x" * 200])
            return
        try:
            doc = json.loads(meta[key])
        except json.JSONDecodeError:
            meta[key] = json.dumps(rng.choice(ODD))
            return
        places = [p for p, _ in paths_in(doc) if p]
        if not places:
            meta[key] = json.dumps(rng.choice(ODD))
            return
        path = rng.choice(places)
        if roll < 0.3:  # a nearby number: what a plausible forgery looks like
            old = dict(paths_in(doc))[path]
            new = (old + rng.choice([-1, 1, 2, -2, 100]) if type(old) in (int, float) else rng.choice(ODD))
        else:
            new = rng.choice(ODD)
        set_in(doc, path, new)
        meta[key] = json.dumps(doc)
    return change


def compact_parts(data: bytes) -> tuple[int, dict, bytes]:
    """A compact file -> (where its compressed header starts, the header, the tensor bytes)."""
    pos, n, shift = 4, 0, 0
    while True:
        n |= (data[pos] & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if not data[pos - 1] & 0x80:
            break
    z = zlib.decompressobj(-15, container.ZDICT)
    return pos, json.loads(z.decompress(data[pos:pos + n])), data[pos + n:-8]


def compact_bytes(h: dict, payload: bytes) -> bytes:
    z = zlib.compressobj(9, zlib.DEFLATED, -15, 9, zlib.Z_DEFAULT_STRATEGY, container.ZDICT)
    packed = z.compress(json.dumps(h).encode()) + z.flush()
    body = container.MAGIC + bytes([3]) + container._varint(len(packed)) + packed + payload
    return body + hashlib.sha256(body).digest()[:8]


def mutate_compact(rng: random.Random, data: bytes) -> tuple[str, bytes]:
    """One damaged or crafted version of a compact (version 3) file. ``*-rehash`` kinds are
    crafted: their checksum is recomputed."""
    kind = rng.choice(["truncate", "flip", "flip-header", "meta", "meta-rehash", "meta-rehash", "tensor-rehash",
                       "tensor-rehash", "table-rehash", "header-length"])
    start, h, payload = compact_parts(data)
    if kind == "truncate":
        return kind, data[:rng.randrange(len(data))]
    if kind in ("flip", "flip-header"):
        b = bytearray(data)
        lo, hi = (3, start + 4) if kind == "flip-header" else (0, len(b))
        for _ in range(rng.randint(1, 4)):
            b[rng.randrange(lo, min(hi, len(b)))] ^= 1 << rng.randrange(8)
        return kind, bytes(b)
    if kind.startswith("meta"):
        return kind, rewrite_metadata(data, craft_metadata(rng, kind == "meta-rehash"), rehash=kind == "meta-rehash")
    if kind == "tensor-rehash":  # one stored number changed: a gain, a step, a coder parameter, a stream word
        def poke(meta, tensors):
            name = rng.choice(sorted(tensors))
            t = tensors[name]
            if t.size:
                v = rng.choice([0, 1, -1, 2**15 - 1, -2**15, 2**31 - 1, 2**32 - 1, 7, 1e30, float("nan"), -0.5])
                try:
                    t.reshape(-1)[rng.randrange(t.size)] = v
                except (ValueError, OverflowError):
                    t.reshape(-1)[rng.randrange(t.size)] = 0
        return kind, rewrite_compact(data, poke)
    if kind == "table-rehash":  # a tensor's dtype or shape in the table changed (the bytes left alone)
        entry = rng.choice(h["tensors"])
        if rng.random() < 0.5:
            entry[1] = rng.choice(["f4", "i2", "i4", "u4", "u1", "f8", "x"])
        else:
            entry[2] = rng.choice([[], [0], [10**9], [2**40, 2**40], [-1], [1, 1, 1]])
        return kind, compact_bytes(h, payload)
    b = bytearray(data)
    b[4] = rng.choice([0, 1, 0x7F, 0x80, 0xFF])
    return kind, bytes(b)


def mutate(rng: random.Random, data: bytes) -> tuple[str, bytes]:
    """One damaged or crafted version of ``data`` and what was done."""
    if container.is_compact(data):
        return mutate_compact(rng, data)
    kind = rng.choice(["truncate", "flip", "flip-header", "meta", "meta-rehash", "meta-rehash", "tensor-header",
                       "header-length"])
    if kind == "truncate":
        return kind, data[:rng.randrange(len(data))]
    if kind in ("flip", "flip-header"):
        b = bytearray(data)
        n = struct.unpack("<Q", data[:8])[0]
        lo, hi = (8, 8 + n) if kind == "flip-header" else (0, len(b))
        for _ in range(rng.randint(1, 4)):
            b[rng.randrange(lo, hi)] ^= 1 << rng.randrange(8)
        return kind, bytes(b)
    if kind.startswith("meta"):
        return kind, rewrite_metadata(data, craft_metadata(rng, kind == "meta-rehash"), rehash=kind == "meta-rehash")
    if kind == "tensor-header":  # a tensor's dtype, shape or offsets changed (the bytes left alone)
        h, body = header(data)
        name = rng.choice(sorted(k for k in h if k != "__metadata__"))
        field = rng.choice(["dtype", "shape", "data_offsets"])
        h[name][field] = {"dtype": lambda: rng.choice(["F64", "I64", "U8", "F16", "BOOL", "X"]),
                          "shape": lambda: rng.choice([[], [0], [10**9], [2**40, 2**40], [-1]]),
                          "data_offsets": lambda: rng.choice([[0, 10**12], [5, 3], [0, 0]])}[field]()
        return f"tensor-header-{field}", with_header(h, body)
    n = struct.unpack("<Q", data[:8])[0]
    return kind, struct.pack("<Q", rng.choice([0, 1, n - 1, n + 8, 2**63, 10**8])) + data[8:]


@pytest.fixture(scope="module")
def originals(tmp_path_factory, speech):
    """Four kinds of file: a tiny fitted INR and a KAN-RVQ code file (bundled model), both
    compact (version 3), the INR as version 2 wrote it, and a version 1 fixture."""
    folder = tmp_path_factory.mktemp("orig")
    x = (0.5 * np.sin(np.arange(4000) / 5.0)).astype(np.float32)[None]
    inr = kancodec.encode(x, sr=8000, **{**TINY_ENCODE, "steps": 3})
    files = {"inr": inr.to_bytes(), "v2": version2(inr),
             "ae": kancodec.encode(speech[0][:, :11025], sr=speech[1], ae="krvq", codebooks=2, device="cpu").to_bytes(),
             "v1": (Path(__file__).parent / "data" / "inr-siren-6bit.kan").read_bytes()}
    decoded = {}
    for name, data in files.items():
        (folder / f"{name}.kan").write_bytes(data)
        res = cli("decode", folder / f"{name}.kan", "-o", folder / f"{name}.wav", "--device", "cpu")
        assert res.exit_code == 0, res.output
        decoded[name] = (folder / f"{name}.wav").read_bytes()
    return files, decoded


def test_fuzzed_files_are_refused_in_one_line_or_decode_identically(originals, tmp_path):
    files, decoded = originals
    rng = random.Random(SEED)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    counts: dict[str, int] = {}
    slowest = 0.0
    for i in range(CASES):
        name = rng.choice(sorted(files))
        how, data = mutate(rng, files[name])
        f, out = tmp_path / f"{i}.kan", tmp_path / f"{i}.wav"
        f.write_bytes(data)
        start = time.perf_counter()
        res = cli("decode", f, "-o", out, "--device", "cpu")
        info = cli("info", f)
        slowest = max(slowest, time.perf_counter() - start)
        case = f"case {i} ({name}, {how})"
        for r in (res, info):
            assert r.exception is None or isinstance(r.exception, SystemExit), (case, r.exception)
        if res.exit_code == 0:
            same = out.read_bytes() == decoded[name]
            # Other audio only from a file that is valid as it stands: a crafter who recomputes the
            # checksum (anyone can) may write any file the schema allows, and a version 1 file's
            # metadata is not covered by its checksum. Damage is always refused or harmless.
            assert same or how.endswith("-rehash") or (name == "v1" and how in ("meta", "flip-header")), \
                (case, changed(files[name], data))
            assert info.exit_code == 0, (case, info.output)
            outcome = "decoded as the original" if same else "decoded: a different valid file"
        else:
            lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
            assert res.exit_code == 4, (case, res.exit_code, res.output)
            assert len(lines) == 1 and lines[0].startswith("error:"), (case, res.stderr)
            assert "\x1b" not in res.stderr and not out.exists(), case
            # info reads the file alone: a code file whose config disagrees with the model it names
            # is refused when decode loads that model
            # and a coded stream is decoded only in part by info (one network), in full by decode
            assert info.exit_code == 4 or (name == "ae" and how == "meta-rehash") or \
                (name == "inr" and how == "tensor-rehash"), (case, info.output)
            outcome = "refused"
        counts[outcome] = counts.get(outcome, 0) + 1
        f.unlink()
        out.unlink(missing_ok=True)
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    print(f"fuzz: {counts}, slowest case {slowest:.2f} s, memory high-water +{grown:.0f} MB")
    assert slowest < SECONDS and grown < MEMORY_MB
    assert counts.get("refused", 0) > 0.6 * CASES  # the mutations reach the checks (not all no-ops)
    assert list(tmp_path.iterdir()) == []
