"""One schema for the metadata of ``.kan`` files, checked before anything is allocated.

Every field a decode uses is checked here for its type (JSON integers are not floats, not
booleans, not strings), its range and its consistency with the other fields and with the
tensors' shapes, and a file that fails is refused with one line naming the field and the
value (:class:`~kancodec.errors.FormatError`, exit 4). The checksum says a file is what its
writer wrote; this says that what was written can be decoded in bounded time and memory.

The bounds are generous for anything kancodec writes (its encoders take 8-192 kHz audio,
windows of 256 samples up, networks of a few tens of thousands of weights) and small enough
that no file, however crafted, makes a decode allocate more than :data:`MAX_WORK_BYTES` of
working memory per step.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch

from . import inr
from .audio import n_windows
from .errors import FormatError, KanError, OptionError

#: sample rates a file may state (an input's, a fitting rate, a model's)
RATES = (1000, 384_000)
MAX_CHANNELS = 256
#: a chunk (window) of at most this many samples at the fitting rate
MAX_CHUNK = 1 << 20
#: at most this many windows per channel (a day at 48 kHz in 256-sample windows)
MAX_WINDOWS = 1 << 24
#: a file's audio lasts at most a day
MAX_SECONDS = 24 * 3600
#: weights per network (the default KAN has 33,768)
MAX_PARAMS = 1 << 21
#: widths of a hidden layer
MAX_WIDTH = 4096
#: integer config fields without a bound of their own
INT_BOUNDS = {"n_freqs": (1, 32), "grid": (1, 256), "order": (1, 5), "n_features": (1, MAX_WIDTH),
              "seed": (0, 2**63 - 1)}
#: floats in a config (frequencies, scales, ranges) are finite and at most this large
MAX_FLOAT = 1e7
#: working memory a decode may need for one slice of its forward pass (see :func:`kan_work`)
MAX_WORK_BYTES = 1 << 30


def shown(value: Any) -> str:
    """A value as a message shows it: ``repr``, cut to 40 characters."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def bad(where: str, name: str, value: Any, need: str) -> FormatError:
    return FormatError(f"{where}: metadata {name} = {shown(value)} {need}; the file is damaged or crafted, "
                       "re-encode the audio")


def obj(where: str, name: str, value: Any, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> dict:
    """A JSON object with exactly the ``required`` keys (and maybe the ``optional`` ones)."""
    if not isinstance(value, dict):
        raise bad(where, name, value, "is not an object")
    missing = [k for k in required if k not in value]
    if missing:
        raise FormatError(f"{where}: metadata {name}.{missing[0]} is missing; the file is damaged or crafted, "
                          "re-encode the audio")
    unknown = sorted(set(value) - set(required) - set(optional), key=str)
    if unknown:
        raise bad(where, f"{name}.{unknown[0]}", value[unknown[0]], "is not a field of this format")
    return value


def integer(where: str, name: str, value: Any, lo: int, hi: int) -> int:
    """A JSON integer in ``[lo, hi]``."""
    if type(value) is not int:
        raise bad(where, name, value, "is not a whole number")
    if not lo <= value <= hi:
        raise bad(where, name, value, f"is out of range (allowed {lo:,} to {hi:,})")
    return value


def number(where: str, name: str, value: Any, lo: float = -MAX_FLOAT, hi: float = MAX_FLOAT) -> float:
    """A finite JSON number in ``[lo, hi]``."""
    if type(value) not in (int, float) or not math.isfinite(value):
        raise bad(where, name, value, "is not a finite number")
    if not lo <= value <= hi:
        raise bad(where, name, value, f"is out of range (allowed {lo:g} to {hi:g})")
    return float(value)


def choice(where: str, name: str, value: Any, options: tuple) -> Any:
    if not any(type(value) is type(o) and value == o for o in options):
        raise bad(where, name, value, f"is not one of {', '.join(map(str, options))}")
    return value


def integers(where: str, name: str, value: Any, lo: int, hi: int, most: int = 16) -> tuple[int, ...]:
    """A non-empty JSON list of at most ``most`` integers in ``[lo, hi]``."""
    if not isinstance(value, list) or not 1 <= len(value) <= most:
        raise bad(where, name, value, f"is not a list of 1 to {most} whole numbers")
    return tuple(integer(where, f"{name}[{i}]", v, lo, hi) for i, v in enumerate(value))


def dataclass_values(where: str, name: str, cls: type, d: Any, bounds: dict[str, tuple],
                     optional: tuple[str, ...] = ()) -> dict[str, Any]:
    """The init fields of the config dataclass ``cls`` from the JSON object ``d``, each checked
    by its declared type: ``int`` (within ``bounds``, else 1 to :data:`MAX_WIDTH`), ``float``
    (finite), ``bool``, ``str`` (short), ``tuple[int, ...]`` (widths) and ``tuple[float, float]``
    (an increasing range)."""
    fields = [f for f in dataclasses.fields(cls) if f.init]
    d = obj(where, name, d, tuple(f.name for f in fields), optional)
    values: dict[str, Any] = {}
    for f in fields:
        key, v, kind = f"{name}.{f.name}", d[f.name], str(f.type)
        if kind == "int":
            values[f.name] = integer(where, key, v, *bounds.get(f.name, (1, MAX_WIDTH)))
        elif kind == "float":
            values[f.name] = number(where, key, v)
        elif kind == "bool":
            values[f.name] = choice(where, key, v, (False, True))
        elif kind == "str":
            if not isinstance(v, str) or not 0 < len(v) <= 40:
                raise bad(where, key, v, "is not a short name")
            values[f.name] = v
        elif kind.startswith("tuple[int"):
            values[f.name] = integers(where, key, v, 1, MAX_WIDTH)
        elif kind == "tuple[float, float]":
            if not isinstance(v, list) or len(v) != 2:
                raise bad(where, key, v, "is not a pair of numbers")
            lo, hi = (number(where, f"{key}[{i}]", x) for i, x in enumerate(v))
            if not lo < hi:
                raise bad(where, key, v, "is not an increasing range")
            values[f.name] = (lo, hi)
        else:  # a field type the schema does not know: a programming error, not a file's
            raise TypeError(f"schema: no rule for {cls.__name__}.{f.name}: {kind}")
    return values


def inr_config(where: str, d: Any) -> inr.INR:
    """The ``kancodec.inr`` object -> the family's config; every field checked by its declared type."""
    name = "kancodec.inr"
    if not isinstance(d, dict):
        raise bad(where, name, d, "is not an object")
    arch = choice(where, f"{name}.arch", d.get("arch", "kan"), tuple(inr.INR_CONFIGS))
    values = dataclass_values(where, name, inr.INR_CONFIGS[arch], d, INT_BOUNDS, ("arch",))
    try:
        config = inr.INR_CONFIGS[arch](**values)
    except (KanError, TypeError, ValueError) as e:
        raise FormatError(f"{where}: metadata {name} is not a valid {arch} network ({e}); re-encode the audio") from None
    if config.n_params > MAX_PARAMS:
        raise bad(where, name, f"{config.n_params:,} weights", f"is too large a network (at most {MAX_PARAMS:,})")
    return config


def kan_work(config: inr.INR, rows: int = 4096) -> int:
    """Bytes of the largest intermediate of one forward slice of ``rows`` samples (the
    B-spline basis of a KAN layer: rows × inputs × (grid + order) floats; an MLP's widest
    activation)."""
    widest = max(math.prod(s[:-1]) if len(s) == 3 else s[-1] for s in config.shapes().values())
    return rows * widest * 4


def audio_facts(where: str, d: Any, required: tuple[str, ...]) -> dict:
    """The ``kancodec.audio`` object: the fields every file has (rates, channels, frames)."""
    name = "kancodec.audio"
    d = obj(where, name, d, required)
    out = dict(d)
    out["sample_rate"] = integer(where, f"{name}.sample_rate", d["sample_rate"], *RATES)
    out["channels"] = integer(where, f"{name}.channels", d["channels"], 1, MAX_CHANNELS)
    out["frames"] = integer(where, f"{name}.frames", d["frames"], 1, MAX_SECONDS * out["sample_rate"])
    return out


def inr_audio(where: str, d: Any) -> dict:
    """An INR file's audio facts, consistent with each other: the windows tile the fitted frames."""
    name = "kancodec.audio"
    a = audio_facts(where, d, ("sample_rate", "fit_sr", "channels", "frames", "fit_frames", "chunk", "overlap",
                               "windows"))
    a["fit_sr"] = integer(where, f"{name}.fit_sr", a["fit_sr"], *RATES)
    a["chunk"] = integer(where, f"{name}.chunk", a["chunk"], 16, MAX_CHUNK)
    a["overlap"] = integer(where, f"{name}.overlap", a["overlap"], 0, a["chunk"] // 2 - 1)
    expected_fit = round(a["frames"] * a["fit_sr"] / a["sample_rate"])
    a["fit_frames"] = integer(where, f"{name}.fit_frames", a["fit_frames"], max(1, expected_fit - 2), expected_fit + 2)
    windows = n_windows(a["fit_frames"], a["chunk"], a["overlap"])
    if a["windows"] != windows:
        raise bad(where, f"{name}.windows", a["windows"], f"does not tile {a['fit_frames']:,} frames in windows of "
                                                           f"{a['chunk']} overlapping by {a['overlap']} ({windows} do)")
    integer(where, f"{name}.windows", a["windows"], 1, MAX_WINDOWS)
    return a


def feature_bytes(config: inr.INR) -> int:
    """Bytes per sample of the first layer's input features (the KAN's B-spline basis of its
    positional encoding; Fourier features for the MLP families), measured on one sample."""
    with torch.inference_mode():
        f = inr.input_features(config, torch.zeros(1))
    return f.shape[-1] * f.element_size()


#: bytes per output sample of a window's index, time and weight arrays in a decode
GRID_BYTES = 48


def decode_work(config: inr.INR, chunk: int, fit_sr: int, out_sr: int) -> int:
    """Bytes of the largest working set a decode at ``out_sr`` allocates at once: one window
    on the output grid (its features, sample indices, times and weights), or one slice of
    the forward pass (:func:`kan_work`)."""
    span = math.ceil(chunk * max(out_sr, fit_sr) / fit_sr) + 1
    return max(span * (feature_bytes(config) + GRID_BYTES), kan_work(config))


def check_decode_work(config: inr.INR, chunk: int, fit_sr: int, out_sr: int) -> None:
    """OptionError (naming ``sr``) when decoding at ``out_sr`` would pass :data:`MAX_WORK_BYTES`."""
    work = decode_work(config, chunk, fit_sr, out_sr)
    if work > MAX_WORK_BYTES:
        raise OptionError(f"{{sr}} {out_sr}: decoding this file at {out_sr} Hz needs {work / 2**30:.1f} GiB per window "
                          f"(at most {MAX_WORK_BYTES >> 30} GiB); choose a lower {{sr}}", "sr")


#: the largest magnitude a stored value (a gain, an affine offset or step) may have
MAX_VALUE = 1e30


def values(where: str, name: str, t, nonnegative: bool = False) -> None:
    """A float tensor's values are finite, within :data:`MAX_VALUE` and, if asked, not negative
    (the encoder never writes anything else; a crafted file could make full-scale noise)."""
    a = t.astype("float64", copy=False)
    if not (abs(a) <= MAX_VALUE).all() or (nonnegative and (a < 0).any()):
        raise FormatError(f"{where}: tensor {name} holds NaN, infinite, huge{' or negative' if nonnegative else ''} "
                          "values; the file is damaged or crafted, re-encode the audio")
