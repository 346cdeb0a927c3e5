"""Where and how work runs: the device, compiling, batch sizes, progress events.

Everything here is policy shared by the codecs, training and the benchmarks; none of it
knows about audio. Process-wide settings are changed in exactly two places, both
idempotent and both below: glibc's allocator thresholds (:func:`tune_allocator`) and
torch's dynamo recompile limits (:func:`_raise_dynamo_limits`, on the first compile).
"""

from __future__ import annotations

import ctypes
import os
import sys
import warnings
from dataclasses import dataclass, field
from typing import Callable

import torch

from .errors import DeviceError, OptionError

DEVICES = ("auto", "cpu", "cuda")


@dataclass
class Event:
    """Progress report passed to ``progress`` callbacks.

    ``stage`` is ``"plan"`` (once, ``info`` has the plan), ``"fit"`` (``done``/``total``
    steps summed over batches, ``info`` has loss and SNR), ``"estimate"`` (``info["seconds"]``:
    measured time left), ``"decode"`` (windows done); training adds ``"data"``, ``"train"``,
    ``"val"`` and ``"checkpoint"``.
    """

    stage: str
    done: int = 0
    total: int = 0
    info: dict = field(default_factory=dict)


Progress = Callable[[Event], None]


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None``/``"auto"`` -> CUDA when available, else CPU; refuses CUDA where there is none."""
    if isinstance(device, torch.device):
        return device
    name = (device or "auto").lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceError("--device cuda: no CUDA GPU is available here; use --device cpu (or auto)")
        return torch.device(name)
    if name == "cpu":
        return torch.device("cpu")
    raise OptionError(f"{{device}} {device!r} is not a device; choose one of: {', '.join(DEVICES)}", "device")


#: peak memory of one fitting step per window of 32,768 samples of the default KAN (a 10 s
#: mono clip at 22.05 kHz, 7 windows, --steps 5: 7.9 GB eager, i.e. ~1.1 GB a window; 8
#: windows of an 8-channel clip compiled: 2.5 GB, ~0.3 GB a window). CUDA: 0.7 GB, measured there.
STEP_BYTES = {"eager": 1.1e9, "compiled": 0.3e9, "cuda": 0.7e9}


def cpu_budget() -> float:
    """Bytes a CPU fit may use for one batch: a quarter of the machine's memory, at most 4 GiB."""
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        total = 8 * 2**30
    return min(4 * 2**30, total / 4)


def window_bytes(device: torch.device, n: int, compiled: bool = False, scale: float = 1.0) -> float:
    """Peak bytes of one fitting step per window of ``n`` samples (:data:`STEP_BYTES`);
    ``scale``: the network's intermediates relative to the default KAN's."""
    key = "cuda" if device.type == "cuda" else "compiled" if compiled else "eager"
    return STEP_BYTES[key] * scale * n / 32768


def batch_size(device: torch.device, n: int, compiled: bool = False, scale: float = 1.0) -> int:
    """Windows of ``n`` samples per optimisation: bounded so memory stays flat however long the
    file is and whatever its channel count (channels are windows like any other)."""
    per_window = window_bytes(device, n, compiled, scale)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return max(1, min(256, int(0.6 * free / per_window)))
    return max(1, min(8, int(cpu_budget() / per_window)))  # 8 amortise the per-step overhead; more gain nothing


def fit_memory(device: torch.device, n: int, batch: int, compiled: bool, scale: float = 1.0) -> float:
    """Bytes one fitting batch of ``batch`` windows of ``n`` samples is expected to need, for
    the plan an encode prints before it starts."""
    return window_bytes(device, n, compiled, scale) * batch


def want_compile(compile: bool | str, work: float, pays_from: float = 200) -> bool:
    """``"auto"``: compile when the work pays back the ~10-25 s compile.

    Fitting: ``work`` in window-steps, where compiling saves ~0.6 s each on CPU, so from
    ~200. Decoding: ``work`` in windows, where it saves ~0.25 s each, so from ~64.
    """
    if compile == "auto":
        return work >= pays_from
    return bool(compile)


_allocator_tuned = False


def tune_allocator() -> None:
    """Keep freed memory in the process heap (glibc only; idempotent; called before heavy work).

    The KAN basis tensors are tens of MB and are allocated and freed at every step. By
    default glibc hands blocks of that size straight back to the kernel, so each step pays
    for fresh zeroed pages: on a 2-core CPU that doubled the cost of an 82 MB elementwise op
    (40 ms vs 8 ms, measured). Raising the mmap and trim thresholds keeps those blocks in the
    heap for reuse. No effect (and no error) on other C libraries.
    """
    global _allocator_tuned
    if _allocator_tuned or not sys.platform.startswith("linux"):
        return
    _allocator_tuned = True
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 32 * 1024 * 1024)  # M_MMAP_THRESHOLD: glibc's maximum
        libc.mallopt(-1, 1024 * 1024 * 1024)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass


_dynamo_raised = False


def _raise_dynamo_limits() -> None:
    """Every batch size and time-slice length is a new static shape; torch's default limit
    of 8 graphs per function would silently drop a long encode (fit, then decode) back to
    eager. Raised to 256 once per process, the first time kancodec compiles anything."""
    global _dynamo_raised
    if _dynamo_raised:
        return
    _dynamo_raised = True
    cfg = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(cfg, name):
            setattr(cfg, name, max(getattr(cfg, name), 256))


class Compiled:
    """``fn`` through ``torch.compile``, falling back to eager for good if compiling fails
    (no C compiler, an unsupported platform): slower, never broken."""

    def __init__(self, fn: Callable) -> None:
        _raise_dynamo_limits()
        self.base = fn
        self.fn = torch.compile(fn, dynamic=False)

    def __call__(self, *args):
        if self.fn is not self.base:
            try:
                return self.fn(*args)
            except Exception as e:  # noqa: BLE001 - any compiler failure means: run eager
                warnings.warn(f"torch.compile failed ({type(e).__name__}); running uncompiled (slower: ~3x for the network)")
                self.fn = self.base
        return self.base(*args)
