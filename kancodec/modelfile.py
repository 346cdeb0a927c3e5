"""Model files (hypernetworks, autoencoders), version 1: the one place where they are defined.

A model file is a :mod:`~kancodec.container` with the tag ``"kancodec-model"``. Its metadata
besides the container's own:

=====================  ==========================================================
``kancodec.kind``      what the tensors are: ``"hyper"`` (FewSound/HyperSound) or ``"ae"``
``kancodec.config``    the model's frozen config as JSON (sorted keys), including its target INR
``kancodec.train``     how it was trained: data, steps, time, device, validation metrics
=====================  ==========================================================

Tensors are the model's ``state_dict`` (float16 or float32). Training checkpoints use the
same format with kind ``"hyper-checkpoint"`` or ``"ae-checkpoint"`` and extra ``opt.*`` tensors
(AdamW state).

Models are found by :func:`find_model`: an explicit path, then the user's data directory
(``platformdirs.user_data_dir("kancodec")/models``, where training saves by default), then
the models shipped inside the package (``kancodec/models``, package data, so a wheel carries
them). Bundled models are also checked against the SHA-256 of their bytes recorded in
:data:`BUNDLED`, so a swapped file is refused. :func:`available_models` lists what can be found.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

import platformdirs
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from . import container
from .audio import atomic_path
from .errors import FormatError, InputError

TAG = "kancodec-model"
VERSION = 2  # 2: the checksum covers the metadata too
PREFIX = container.PREFIX
KIND = container.Kind(noun="model file", tags=(TAG,), version=VERSION, label="kancodec model",
                      version_name="model file", unreadable="it is truncated, damaged or of another format",
                      foreign="", upgrade="upgrade kancodec or retrain the model",
                      damaged="the model was modified or damaged; retrain or restore it")
#: what a model name stored in a file may look like: a name, never a path
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,99}")
#: what a model SHA-256 stored in a file looks like
SHA256 = re.compile(r"[0-9a-f]{64}")
#: model files larger than this are refused before they are read (the bundled ones are < 25 MB)
MAX_MODEL_BYTES = 1 << 30
#: the models shipped inside the package
BUNDLED_DIR = Path(__file__).resolve().parent / "models"
#: file name -> SHA-256 of the bundled file's bytes
BUNDLED: dict[str, str] = {
    "fewsound-kan.safetensors": "694aae727ee01f54810ae02271f9598662491a4c86bb988445b054f425aa21a4",
    "krvq.safetensors": "7b367e40520649183932cde021bbeb1a6857197cdb49ecdb8ae40cf8a52324f1",
}


@dataclass(frozen=True)
class ModelRef:
    """A model file as found and checked: where it is and what it holds."""

    name: str  # the file name without .safetensors
    path: Path
    kind: str
    sha256: str  # of the file's bytes
    config: dict
    train: dict


def user_models_dir() -> Path:
    return Path(platformdirs.user_data_dir("kancodec")) / "models"


def _tensor_checksum(tensors: dict[str, torch.Tensor], meta: dict[str, str] | None = None) -> str:
    return container.checksum({k: v.detach().cpu().contiguous().view(torch.uint8).numpy() if v.dtype == torch.bfloat16
                               else v.detach().cpu().contiguous().numpy() for k, v in tensors.items()}, meta)


def save_model(path: str | Path, kind: str, config: dict, tensors: dict[str, torch.Tensor],
               train: dict | None = None, force: bool = False) -> int:
    """Write a model file atomically; returns its size in bytes."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    meta = container.metadata(TAG, VERSION, {"kind": kind, "config": config, "train": train or {}}, tensors,
                              _tensor_checksum)
    data = st_save(tensors, metadata=meta)
    with atomic_path(path, force) as tmp:
        tmp.write_bytes(data)
    return len(data)


def read_model(path: str | Path, kind: str) -> tuple[dict, dict[str, torch.Tensor], dict]:
    """``(config, tensors, train)`` of a model file of ``kind``; FormatError on any problem."""
    ref, tensors = _read(Path(path), kind)
    return ref.config, tensors, ref.train


def _read(path: Path, kind: str | None) -> tuple[ModelRef, dict[str, torch.Tensor]]:
    if not path.is_file():
        raise InputError(f"{path}: no such model file; check the path")
    if path.stat().st_size > MAX_MODEL_BYTES:
        raise FormatError(f"{path}: {path.stat().st_size / 2**30:.1f} GiB is too large to be a kancodec model "
                          f"(at most {MAX_MODEL_BYTES >> 30} GiB); check the path")
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    expected = BUNDLED.get(path.name) if path.parent.resolve() == BUNDLED_DIR else None
    if expected and digest != expected:
        raise FormatError(f"{path}: SHA-256 does not match the bundled model's; the file was modified or damaged, "
                          "reinstall kancodec")
    where = str(path)
    _, meta, tensors = container.read(data, where, KIND, st_load, _tensor_checksum)
    if kind is not None and meta.get(PREFIX + "kind") != kind:
        raise FormatError(f"{where}: is a {meta.get(PREFIX + 'kind')!r} model, expected a {kind!r} model")
    try:
        config, train = json.loads(meta[PREFIX + "config"]), json.loads(meta.get(PREFIX + "train", "{}"))
    except (KeyError, json.JSONDecodeError):
        raise FormatError(f"{where}: model metadata is damaged; retrain or restore it") from None
    return ModelRef(path.name.removesuffix(".safetensors"), path, str(meta.get(PREFIX + "kind")), digest, config,
                    train), tensors


def open_model(name: str | Path, kind: str) -> tuple[ModelRef, dict[str, torch.Tensor]]:
    """Find (:func:`find_model`) and read a model of ``kind`` -> ``(ref, tensors)``."""
    return _read(find_model(name), kind)


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


def model_folders() -> list[Path]:
    """Where models are looked up by name: the user's folder, then the bundled models."""
    return [user_models_dir(), BUNDLED_DIR]


def _sha256_of(path: Path) -> str | None:
    """The SHA-256 of a model file's bytes, or None for what cannot be a model (not a regular
    file, or larger than :data:`MAX_MODEL_BYTES`)."""
    try:
        if not path.is_file() or path.stat().st_size > MAX_MODEL_BYTES:
            return None
    except OSError:
        return None
    return file_sha256(path)


def find_by_hash(name: str, sha256: str, where: str) -> Path:
    """The model a file names: ``name`` is looked up as a name only (never as a path) in
    :func:`model_folders`, and the file whose bytes have ``sha256`` serves, wherever it is
    (same name first, then any other model there). FormatError if the name is not a model
    name, or a model of that name exists but none has the hash; InputError if none exists."""
    if not isinstance(name, str) or not MODEL_NAME.fullmatch(name) or name.endswith(".safetensors"):
        raise FormatError(f"{where}: its model name {str(name)[:60]!r} is not a model name; the file is damaged "
                          "or crafted, decode it with --model PATH if you trust it")
    if not isinstance(sha256, str) or not SHA256.fullmatch(sha256):
        raise FormatError(f"{where}: its model SHA-256 {str(sha256)[:70]!r} is not a SHA-256; the file is damaged")
    folders = model_folders()
    same = [f / f"{name}.safetensors" for f in folders]
    others = [p for f in folders if f.is_dir() for p in sorted(f.glob("*.safetensors")) if p not in same]
    for path in same + others:
        if _sha256_of(path) == sha256:
            return path
    if any(p.is_file() for p in same):
        found = next(p for p in same if p.is_file())
        raise FormatError(f"{where} was coded with model {name!r} (SHA-256 {sha256[:12]}…), but {found} is a different "
                          "model and no model there has that SHA-256; decode with the model file it was made with "
                          "(decode --model PATH)")
    raise InputError(f"{where} needs the model {name!r} (SHA-256 {sha256[:12]}…); looked in: "
                     f"{', '.join(str(f) for f in folders)}; put {name}.safetensors there or decode with --model PATH")


def available_models() -> list[dict]:
    """Every model file kancodec can find by name: the user's folder first (it wins a name
    clash), then the bundled ones. Each: name, kind, bytes, sha256, where ("user" or
    "bundled"), path, and ``shadowed`` (a user model of the same name hides it) or ``error``
    (the file is not a readable model)."""
    rows, seen = [], set()
    for where, folder in (("user", user_models_dir()), ("bundled", BUNDLED_DIR)):
        for path in sorted(folder.glob("*.safetensors")) if folder.is_dir() else []:
            row = {"name": path.name.removesuffix(".safetensors"), "where": where, "path": str(path),
                   "bytes": path.stat().st_size, "shadowed": path.name in seen}
            seen.add(path.name)
            try:
                ref, _ = _read(path, None)
                row.update(kind=ref.kind, sha256=ref.sha256)
            except (FormatError, InputError) as e:
                row.update(kind=None, sha256=None, error=str(e))
            rows.append(row)
    return rows


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
