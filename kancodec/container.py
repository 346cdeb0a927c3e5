"""The one container of every file kancodec writes: ``.kan`` files and model files.

A container is a safetensors file (a JSON header, then raw little-endian tensors; no
pickle). Its metadata holds strings under the ``kancodec.`` prefix; nested values are JSON
with sorted keys. Three entries are the container's own:

=====================  ==========================================================
``kancodec.format``    the tag, also the magic a reader checks first; it names what
                       the file holds (``kancodec-inr``, ``kancodec-ae``, ``kancodec-model``)
``kancodec.version``   the version of that format, independent of the package version
``kancodec.sha256``    SHA-256 over every other metadata entry (sorted by key, each length-
                       prefixed) and every tensor (sorted by name: name, dtype, shape,
                       bytes). Version 1 of every format hashed the tensors only: such
                       files are still read, and :func:`covers_metadata` says so.
=====================  ==========================================================

Version 3 of the ``.kan`` formats is **compact** (a short file's header was most of it):

=====================  ==========================================================
magic                  ``KAN`` and the version byte (3)
header                 varint length, then raw DEFLATE (with the preset dictionary
                       :data:`ZDICT`) of a JSON object: ``{"meta": {key: value},
                       "tensors": [[name, dtype, shape], …]}``; keys without the
                       ``kancodec.`` prefix, values as objects (not JSON strings)
payload                the tensors' little-endian bytes, in table order
checksum               the first 8 bytes of SHA-256 over everything before it
=====================  ==========================================================

A reader turns it back into the same metadata strings and tensors as a safetensors file,
so what a file holds is checked the same way whatever its version.

What else a file holds is up to its kind: :mod:`kancodec.inrfile` and
:mod:`kancodec.aecodec` (``.kan`` files), :mod:`kancodec.modelfile` (models).
"""

from __future__ import annotations

import hashlib
import json
import zlib
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from .errors import FormatError

PREFIX = "kancodec."
MAX_HEADER = 100_000_000
MAGIC = b"KAN"
#: the first version of each format whose checksum covers the metadata
META_FROM = 2
#: the first version of the .kan formats in the compact container
COMPACT_FROM = 3
#: dtypes a compact file may hold
DTYPES = {"f4": "<f4", "i2": "<i2", "i4": "<i4", "u4": "<u4", "u1": "u1"}
#: DEFLATE's preset dictionary for compact headers: typical text of one, so a default
#: header compresses to a few dozen bytes. Part of format version 3: never change it.
#   (the headers of a default autoencoder file and of a default INR file)
ZDICT = (b'{"meta":{"audio":{"channels":1,"frames":33075,"model_frames":33075,"model_sr":22050,"sample_rate":22'
         b'050,"steps":131},"code":{"codebooks":1},"encode":{"device":"cpu","kancodec":"0.1.0","seconds":0.03,"'
         b'si_snr_db":10.0,"snr_db":10.0,"train_steps":10000},"format":"kancodec-ae","model":{"config":{"codebo'
         b'ok_size":1024,"codebooks":8,"commitment":0.25,"ema_decay":0.99,"frame":512,"grid":8,"hidden":[128],"'
         b'hop":256,"kind":"krvq","kl_weight":0.001,"latent":32,"latent_bits":8,"latent_norm":true,"layer":"kan'
         b'","order":3,"quantizer_dropout":0.5,"sample_rate":22050},"name":"krvq","sha256":"7b367e4052064918393'
         b'2cde021bbeb1a6857197cdb49ecdb8ae40cf8a52324f1"},"version":"3"},"tensors":[["gain","f4",[1]],["codes"'
         b',"u1",[1,164]]]}'
         b'{"meta":{"audio":{"channels":1,"chunk":32768,"fit_frames":33075,"fit_sr":22050,"frames":33075,"overl'
         b'ap":1024,"sample_rate":22050,"windows":2},"encode":{"compile":false,"device":"cpu","kancodec":"0.1.0'
         b'","kbps_target":48.0,"preset":"fast","seconds":10.0,"settings":{"final_lr_ratio":0.02,"l1_weight":1.'
         b'0,"lr":0.05,"qat":0.2,"seed":0,"spectral_weight":0.01,"steps":200,"warmup":0.05,"weight_decay":0.0},'
         b'"si_snr_db":10.0,"snr_db":10.0},"format":"kancodec-inr","inr":{"arch":"kan","grid":10,"grid_range":['
         b'-1.0,1.0],"hidden":[48,24,12],"n_freqs":10,"order":2},"quant":{"bits":8,"scheme":"laplace-ans"},"ver'
         b'sion":"3"},"tensors":[["step","f4",[2,8]],["side","i2",[2,8,3]],["size","i4",[2]],["ans","u4",[13549'
         b']],["gain","f4",[2]]]}')


@dataclass(frozen=True)
class Kind:
    """What a reader expects, and how it says what went wrong."""

    noun: str  # ".kan file", "model file"
    tags: tuple[str, ...]
    version: int  # the version written; every version from 1 up to it is read
    label: str  # what a right tag makes it: "kancodec file", "kancodec model"
    version_name: str  # ".kan format", "model file"
    unreadable: str  # the end of the "not readable" message
    foreign: str  # the end of the "wrong tag" message
    upgrade: str  # the fix for an unknown version
    damaged: str  # the end of the checksum message


def checksum(tensors: Mapping[str, np.ndarray], meta: Mapping[str, str] | None = None) -> str:
    """SHA-256 over ``meta`` (all but the checksum entry itself; None: not covered, as in
    version 1) and ``tensors``."""
    h = hashlib.sha256()
    for key in sorted(meta or {}):
        if key != PREFIX + "sha256":
            k, v = key.encode(), str(meta[key]).encode()
            h.update(b"%d:%s=%d:%s|" % (len(k), k, len(v), v))
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name])
        h.update(f"{name}|{a.dtype.str}|{list(a.shape)}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def metadata(tag: str, version: int, fields: Mapping[str, Any], tensors: Mapping[str, np.ndarray],
             digest: Callable = checksum) -> dict[str, str]:
    """The metadata strings of a container: ``fields`` (strings as they are, anything else as
    sorted JSON) between the tag/version and the checksum (``digest``) of all of it and ``tensors``."""
    meta = {PREFIX + "format": tag, PREFIX + "version": str(version)}
    for key, value in fields.items():
        meta[PREFIX + key] = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    meta[PREFIX + "sha256"] = digest(tensors, meta if version >= META_FROM else None)
    return meta


def covers_metadata(meta: Mapping[str, str]) -> bool:
    """Whether a checked container's checksum covers its metadata (version 2 on)."""
    return meta.get(PREFIX + "version") != "1"


def write(tag: str, version: int, fields: Mapping[str, Any], tensors: Mapping[str, np.ndarray]) -> bytes:
    """The bytes of a container holding ``tensors`` (NumPy arrays) and ``fields``."""
    return st_save({k: np.ascontiguousarray(v) for k, v in tensors.items()},
                   metadata=metadata(tag, version, fields, tensors))


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def write_compact(tag: str, version: int, fields: Mapping[str, Any], tensors: Mapping[str, np.ndarray]) -> bytes:
    """The bytes of a compact (version 3) container; see the module docstring."""
    table, blobs = [], []
    for name, a in tensors.items():
        a = np.ascontiguousarray(a)
        code = next(k for k, v in DTYPES.items() if np.dtype(v) == a.dtype.newbyteorder("<") or np.dtype(v) == a.dtype)
        table.append([name, code, list(a.shape)])
        blobs.append(a.astype(DTYPES[code], copy=False).tobytes())
    header = json.dumps({"meta": {"format": tag, "version": str(version), **fields}, "tensors": table},
                        sort_keys=True, separators=(",", ":")).encode()
    z = zlib.compressobj(9, zlib.DEFLATED, -15, 9, zlib.Z_DEFAULT_STRATEGY, ZDICT)
    packed = z.compress(header) + z.flush()
    body = MAGIC + bytes([version]) + _varint(len(packed)) + packed + b"".join(blobs)
    return body + hashlib.sha256(body).digest()[:8]


def is_compact(data: bytes) -> bool:
    return data[:3] == MAGIC


def _read_compact(data: bytes, where: str, kind: Kind) -> tuple[dict[str, str], dict, bool]:
    """-> ``(metadata strings, tensors, checksum matches)``; FormatError if unreadable."""
    def broken(why: str) -> FormatError:
        return FormatError(f"{where}: not a readable {kind.noun} ({why}); {kind.unreadable}")

    if len(data) < 4 + 1 + 8:
        raise broken(f"{len(data)} bytes")
    version = data[3]
    if version < COMPACT_FROM:
        raise broken(f"compact header of version {version}")
    pos, hlen, shift = 4, 0, 0
    while True:
        if pos >= len(data) or shift > 28:
            raise broken("bad header length")
        byte = data[pos]
        hlen |= (byte & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if not byte & 0x80:
            break
    if pos + hlen + 8 > len(data):
        raise FormatError(f"{where}: header runs past the end of the file; {kind.unreadable}")
    ok = hashlib.sha256(data[:-8]).digest()[:8] == data[-8:]
    try:
        z = zlib.decompressobj(-15, ZDICT)
        text = z.decompress(data[pos:pos + hlen], MAX_HEADER)
        if z.unconsumed_tail or not z.eof:
            raise broken("header too long or cut short")
        header = json.loads(text)
        meta_obj, table = header["meta"], header["tensors"]
        if not isinstance(meta_obj, dict) or not isinstance(table, list):
            raise broken("bad header")
        meta = {PREFIX + k: v if isinstance(v, str) else json.dumps(v, sort_keys=True) for k, v in meta_obj.items()}
    except (zlib.error, ValueError, KeyError, TypeError, RecursionError, UnicodeDecodeError):
        raise broken("bad header") from None
    tensors, off, end = {}, pos + hlen, len(data) - 8
    for entry in table:
        if (not isinstance(entry, list) or len(entry) != 3 or not isinstance(entry[0], str) or entry[1] not in DTYPES
                or not isinstance(entry[2], list) or not all(type(d) is int and 0 <= d < 2**40 for d in entry[2])
                or len(entry[2]) > 8 or entry[0] in tensors):
            raise broken("bad tensor table")
        dt = np.dtype(DTYPES[entry[1]])
        n = int(np.prod(entry[2], dtype=object)) * dt.itemsize
        if off + n > end:
            raise broken(f"tensor {entry[0][:40]!r} runs past the end")
        tensors[entry[0]] = np.frombuffer(data, dt, n // dt.itemsize, off).reshape(entry[2]).astype(dt.newbyteorder("="))
        off += n
    if off != end:
        raise broken(f"{end - off} bytes after the last tensor")
    return meta, tensors, ok


def read_raw(data: bytes, where: str, kind: Kind, load: Callable = st_load) -> tuple[dict[str, str], dict]:
    """Parse a container without judging it -> ``(metadata strings, tensors)``; FormatError
    if it is not a readable safetensors file. ``load``: safetensors' NumPy loader, or its
    torch one (model files)."""
    if is_compact(data):
        return _read_compact(data, where, kind)[:2]
    if len(data) < 8:
        raise FormatError(f"{where}: too short to be a {kind.noun} ({len(data)} bytes); {kind.unreadable}")
    header_len = int.from_bytes(data[:8], "little")
    if header_len > len(data) - 8 or header_len > MAX_HEADER:
        raise FormatError(f"{where}: header runs past the end of the file; {kind.unreadable}")
    try:
        header = json.loads(data[8:8 + header_len])
        tensors = load(data)
        meta = header.get("__metadata__") or {}
    except (json.JSONDecodeError, UnicodeDecodeError, SafetensorError, ValueError, AttributeError, RecursionError) as e:
        raise FormatError(f"{where}: not a readable {kind.noun} ({str(e).splitlines()[0][:80] if str(e) else 'bad header'}); "
                          f"{kind.unreadable}") from None
    return meta, tensors


def read(data: bytes, where: str, kind: Kind, load: Callable = st_load,
         digest: Callable = checksum) -> tuple[str, dict[str, str], dict]:
    """Parse and check a container -> ``(tag, metadata strings, tensors)``: the tag is one of
    ``kind.tags``, the version is ``kind.version`` and the tensors match their checksum
    (``digest``: :func:`checksum`, or its torch twin for model files)."""
    compact = is_compact(data)
    if compact:
        meta, tensors, intact = _read_compact(data, where, kind)
    else:
        meta, tensors = read_raw(data, where, kind, load)
    tag = meta.get(PREFIX + "format")
    if tag not in kind.tags:
        expected = " or ".join(repr(t) for t in kind.tags)
        raise FormatError(f"{where}: not a {kind.label} (format tag {tag!r}, expected {expected}){kind.foreign}")
    version = meta.get(PREFIX + "version")
    readable = [str(v) for v in range(1, kind.version + 1)]
    if version not in readable:
        shown = str(version)[:20] if isinstance(version, str) else version
        raise FormatError(f"{where}: {kind.version_name} version {shown} is not supported "
                          f"(this kancodec reads versions 1 to {kind.version}); {kind.upgrade}")
    if compact != (version not in ("1", "2")):
        raise FormatError(f"{where}: version {version} in a {'compact' if compact else 'safetensors'} container; "
                          f"{kind.unreadable}")
    if not (intact if compact else meta.get(PREFIX + "sha256") == digest(tensors, meta if covers_metadata(meta) else None)):
        raise FormatError(f"{where}: checksum mismatch, {kind.damaged}")
    return tag, meta, tensors


def field(meta: Mapping[str, str], key: str, where: str, fix: str = "the file is damaged, re-encode it") -> dict:
    """The JSON object stored under ``kancodec.<key>``; FormatError if missing or not an object."""
    if PREFIX + key not in meta:
        raise FormatError(f"{where}: metadata {PREFIX + key!r} is missing; {fix}")
    try:
        value = json.loads(meta[PREFIX + key])
    except (ValueError, RecursionError, TypeError):  # bad JSON, nesting too deep, a 4,300-digit number
        raise FormatError(f"{where}: metadata {PREFIX + key!r} is not valid JSON; {fix}") from None
    if not isinstance(value, dict):
        raise FormatError(f"{where}: metadata {PREFIX + key!r} is not an object; {fix}")
    return value
