"""Reading ``.kan`` files: the registry of codecs by format tag, and the one reader.

Every ``.kan`` file is a :mod:`~kancodec.container` whose tag names the codec that wrote it
(:data:`CODECS`); that codec checks the rest (:mod:`kancodec.inrfile` for fitted INRs,
:mod:`kancodec.aecodec` for autoencoder codes). A new codec is one line here.
"""

from __future__ import annotations

import os
from pathlib import Path

from . import aecodec, container, inrcodec
from .codec import Codec, Encoded
from .errors import FormatError, InputError

VERSION = Encoded.VERSION  # files of every version up to it are read
#: format tag -> the codec that reads and writes files with it
CODECS: dict[str, Codec] = {c.tag: c for c in (inrcodec.CODEC, aecodec.CODEC)}
KIND = container.Kind(noun=".kan file", tags=tuple(CODECS), version=VERSION, label="kancodec file",
                      version_name=".kan format", unreadable="it is truncated or not a .kan file",
                      foreign="; give a file written by 'kancodec encode'",
                      upgrade="upgrade kancodec or re-encode the audio",
                      damaged="the file was modified or damaged; re-encode the audio")


def codec_for(encoded: Encoded) -> Codec:
    """The codec of an encoded clip (by its file's tag)."""
    return CODECS[encoded.TAG]


def from_bytes(data: bytes, where: str = "<bytes>") -> Encoded:
    """Parse and validate a ``.kan`` file's bytes (any codec); every problem raises FormatError."""
    tag, meta, tensors = container.read(data, where, KIND)
    encoded = CODECS[tag].from_container(meta, tensors, where)
    encoded.metadata_checked = container.covers_metadata(meta)
    return encoded


def load(path: str | Path) -> Encoded:
    """Read a ``.kan`` file; InputError if it is missing, FormatError if it is not valid."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file; check the path")
    return from_bytes(path.read_bytes(), str(path))


def file_size(path: str | Path) -> int:
    return os.path.getsize(path)


__all__ = ["CODECS", "codec_for", "from_bytes", "load", "file_size", "FormatError"]
