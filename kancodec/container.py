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

What else a file holds is up to its kind: :mod:`kancodec.inrfile` and
:mod:`kancodec.aecodec` (``.kan`` files), :mod:`kancodec.modelfile` (models).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from .errors import FormatError

PREFIX = "kancodec."
MAX_HEADER = 100_000_000
#: the first version of each format whose checksum covers the metadata
META_FROM = 2


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


def read_raw(data: bytes, where: str, kind: Kind, load: Callable = st_load) -> tuple[dict[str, str], dict]:
    """Parse a container without judging it -> ``(metadata strings, tensors)``; FormatError
    if it is not a readable safetensors file. ``load``: safetensors' NumPy loader, or its
    torch one (model files)."""
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
    if meta.get(PREFIX + "sha256") != digest(tensors, meta if covers_metadata(meta) else None):
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
