"""Affine quantisation of batched parameters, bit-packed.

Each parameter tensor of each network (one row of the batch axis) gets its own range:
``q = round((x - lo) / step)`` with ``step = (hi - lo) / (2^bits - 1)``, stored as
``bits``-bit unsigned integers packed little-endian into bytes, so a 6-bit file really
is 6 bits per value. ``bits = 32`` stores float32 unquantised.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .errors import OptionError

BITS_CHOICES = (2, 3, 4, 5, 6, 7, 8, 10, 12, 16, 32)


def check_bits(bits: int) -> int:
    if bits not in BITS_CHOICES:
        raise OptionError(f"{{bits}} {bits} is not supported; choose one of: {', '.join(map(str, BITS_CHOICES))}", "bits")
    return bits


def pack_bits(q: np.ndarray, bits: int) -> np.ndarray:
    """``(B, n)`` unsigned ints < 2^bits -> ``(B, ceil(n * bits / 8))`` uint8."""
    if bits == 8:
        return q.astype(np.uint8)
    planes = ((q[..., None].astype(np.uint32) >> np.arange(bits, dtype=np.uint32)) & 1).astype(np.uint8)
    return np.packbits(planes.reshape(q.shape[0], -1), axis=-1, bitorder="little")


def unpack_bits(packed: np.ndarray, bits: int, n: int) -> np.ndarray:
    """Inverse of :func:`pack_bits`: ``(B, bytes)`` uint8 -> ``(B, n)`` uint32."""
    if bits == 8:
        return packed[:, :n].astype(np.uint32)
    planes = np.unpackbits(packed, axis=-1, count=n * bits, bitorder="little").reshape(packed.shape[0], n, bits)
    return (planes.astype(np.uint32) << np.arange(bits, dtype=np.uint32)).sum(-1, dtype=np.uint32)


def packed_size(n: int, bits: int) -> int:
    """Bytes one network's ``n`` values take at ``bits`` bits."""
    return n * 4 if bits == 32 else math.ceil(n * bits / 8)


def quantise(params: dict[str, torch.Tensor], bits: int, keep_float: frozenset[str] = frozenset()) -> dict[str, np.ndarray]:
    """Quantise ``name -> (B, R, …)`` tensors with one affine step per network and row.

    A row is one index of the first per-network axis (a layer input): on the demo clip
    this kept 12.7 dB SI-SNR at 6 bits where one step per tensor kept 8.4 dB.

    ``keep_float`` names tensors stored as float32 whatever ``bits`` is: the first layer of
    the sine networks, whose phase error is ω₀ (thousands) times the weight error.

    Returns:
        for each name: ``q.<name>`` ``(B, bytes)`` uint8 (or ``(B, n)`` float32 at 32 bits or
        when kept in float), and otherwise ``lo.<name>`` and ``step.<name>``, each ``(B, R)`` float32.
    """
    check_bits(bits)
    out: dict[str, np.ndarray] = {}
    for name, p in params.items():
        parts = [_quantise_rows(p[i:i + QUANT_ROWS], bits, name in keep_float) for i in range(0, p.shape[0], QUANT_ROWS)]
        for key in parts[0]:  # networks are quantised independently: blocks of them bound the float64 copies
            out[f"{key}.{name}"] = np.concatenate([part[key] for part in parts])
    return out


#: networks quantised at a time (a long file's weights are not copied to float64 all at once)
QUANT_ROWS = 256


def _quantise_rows(p: torch.Tensor, bits: int, keep_float: bool) -> dict[str, np.ndarray]:
    b, r = p.shape[0], p.shape[1]
    x = p.detach().cpu().double().reshape(b, r, -1).numpy()
    if bits == 32 or keep_float:
        return {"q": x.reshape(b, -1).astype(np.float32)}
    lo = x.min(-1)
    hi = x.max(-1)
    step = (hi - lo) / (2**bits - 1)
    step = np.where(step > 0, step, 1.0).astype(np.float32)
    lo = lo.astype(np.float32)
    q = np.clip(np.rint((x - lo[..., None]) / step[..., None]), 0, 2**bits - 1).astype(np.uint32)
    return {"q": pack_bits(q.reshape(b, -1), bits), "lo": lo, "step": step}


def dequantise(stored: dict[str, np.ndarray], shapes: dict[str, tuple[int, ...]], bits: int,
               keep_float: frozenset[str] = frozenset()) -> dict[str, torch.Tensor]:
    """Inverse of :func:`quantise` for the given per-network ``shapes`` -> ``name -> (B, *shape)`` float32."""
    out: dict[str, torch.Tensor] = {}
    for name, shape in shapes.items():
        q = stored[f"q.{name}"]
        n = math.prod(shape)
        if bits == 32 or name in keep_float:
            x = q.astype(np.float32)
        else:
            values = unpack_bits(q, bits, n).astype(np.float64).reshape(q.shape[0], shape[0], -1)
            x = (stored[f"lo.{name}"][..., None].astype(np.float64)
                 + values * stored[f"step.{name}"][..., None].astype(np.float64)).astype(np.float32)
        out[name] = torch.from_numpy(np.ascontiguousarray(x)).reshape(q.shape[0], *shape)
    return out
