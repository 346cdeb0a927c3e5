"""Model files (hypernetworks, autoencoders), version 1: the one place where they are defined.

A model file is a safetensors file (no pickle). Its metadata, under the ``kancodec.`` prefix:

=====================  ==========================================================
``kancodec.format``    ``"kancodec-model"``: the tag a reader checks first
``kancodec.version``   model-file version (``"1"``), independent of the package version
``kancodec.kind``      what the tensors are: ``"hyper"`` (FewSound/HyperSound) or ``"ae"``
``kancodec.config``    the model's frozen config as JSON (sorted keys), including its target INR
``kancodec.train``     how it was trained: data, steps, time, device, validation metrics
``kancodec.sha256``    SHA-256 over every tensor (as in ``.kan`` files), so damage is caught
=====================  ==========================================================

Tensors are the model's ``state_dict`` (float16 or float32). Training checkpoints use the
same format with kind ``"hyper-checkpoint"`` or ``"ae-checkpoint"`` and extra ``opt.*`` tensors
(AdamW state).

Models are found by :func:`find_model`: an explicit path, then the user's data directory
(``platformdirs.user_data_dir("kancodec")/models``, where training saves by default), then
the ``models/`` folder shipped with kancodec. Bundled models are also checked against the
SHA-256 of their bytes recorded in :data:`BUNDLED`, so a swapped file is refused.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import platformdirs
import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from .audio import atomic_path
from .errors import FormatError, InputError
from .kanfile import checksum

TAG = "kancodec-model"
VERSION = 1
PREFIX = "kancodec."
#: the folder shipped with kancodec (a source checkout or editable install)
BUNDLED_DIR = Path(__file__).resolve().parent.parent / "models"
#: file name -> SHA-256 of the bundled file's bytes
BUNDLED: dict[str, str] = {
    "fewsound-kan.safetensors": "694aae727ee01f54810ae02271f9598662491a4c86bb988445b054f425aa21a4",
    "krvq.safetensors": "7b367e40520649183932cde021bbeb1a6857197cdb49ecdb8ae40cf8a52324f1",
}


def user_models_dir() -> Path:
    return Path(platformdirs.user_data_dir("kancodec")) / "models"


def _tensor_checksum(tensors: dict[str, torch.Tensor]) -> str:
    return checksum({k: v.detach().cpu().contiguous().view(torch.uint8).numpy() if v.dtype == torch.bfloat16
                     else v.detach().cpu().contiguous().numpy() for k, v in tensors.items()})


def save_model(path: str | Path, kind: str, config: dict, tensors: dict[str, torch.Tensor],
               train: dict | None = None, force: bool = False) -> int:
    """Write a model file atomically; returns its size in bytes."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    meta = {PREFIX + "format": TAG, PREFIX + "version": str(VERSION), PREFIX + "kind": kind,
            PREFIX + "config": json.dumps(config, sort_keys=True),
            PREFIX + "train": json.dumps(train or {}, sort_keys=True),
            PREFIX + "sha256": _tensor_checksum(tensors)}
    data = st_save(tensors, metadata=meta)
    with atomic_path(path, force) as tmp:
        tmp.write_bytes(data)
    return len(data)


def read_model(path: str | Path, kind: str) -> tuple[dict, dict[str, torch.Tensor], dict]:
    """``(config, tensors, train)`` of a model file of ``kind``; FormatError on any problem."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such model file; check the path")
    data = path.read_bytes()
    expected = BUNDLED.get(path.name) if path.parent.resolve() == BUNDLED_DIR else None
    if expected and hashlib.sha256(data).hexdigest() != expected:
        raise FormatError(f"{path}: SHA-256 does not match the bundled model's; the file was modified or damaged, "
                          "restore it from the kancodec sources")
    where = str(path)
    try:
        header_len = int.from_bytes(data[:8], "little")
        meta = json.loads(data[8:8 + header_len]).get("__metadata__") or {}
        tensors = st_load(data)
    except (json.JSONDecodeError, UnicodeDecodeError, SafetensorError, ValueError, AttributeError):
        raise FormatError(f"{where}: not a readable model file; it is truncated, damaged or of another format") from None
    if meta.get(PREFIX + "format") != TAG:
        raise FormatError(f"{where}: not a kancodec model (format tag {meta.get(PREFIX + 'format')!r}, expected {TAG!r})")
    if meta.get(PREFIX + "version") != str(VERSION):
        raise FormatError(f"{where}: model file version {meta.get(PREFIX + 'version')} is not supported (this kancodec "
                          f"reads version {VERSION}); upgrade kancodec or retrain the model")
    if meta.get(PREFIX + "kind") != kind:
        raise FormatError(f"{where}: is a {meta.get(PREFIX + 'kind')!r} model, expected a {kind!r} model")
    if meta.get(PREFIX + "sha256") != _tensor_checksum(tensors):
        raise FormatError(f"{where}: checksum mismatch, the model was modified or damaged; retrain or restore it")
    try:
        return json.loads(meta[PREFIX + "config"]), tensors, json.loads(meta.get(PREFIX + "train", "{}"))
    except (KeyError, json.JSONDecodeError):
        raise FormatError(f"{where}: model metadata is damaged; retrain or restore it") from None


def find_model(name: str | Path) -> Path:
    """Resolve a model name or path (see the module docstring for the order)."""
    p = Path(name)
    if p.is_file():
        return p
    if p.suffix != ".safetensors":
        p = p.with_name(p.name + ".safetensors")
    places = [p] if p.parent != Path(".") else [user_models_dir() / p.name, BUNDLED_DIR / p.name]
    for place in places:
        if place.is_file():
            return place
    raise InputError(f"model {str(name)!r} not found; looked in: {', '.join(str(q) for q in places)}; "
                     "give a path or train one")


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()

