"""Rate control (``--kbps``): the depth of the stored weights, chosen so the file lands on a bitrate.

The file's size is its compact header, a fixed cost per network (gain, stream length, and
per tensor a step and the coder's three parameters) and the entropy-coded weights. The
weights' share is what the target leaves after the fixed costs; silent windows cost only
their fixed part, so their share goes to the windows that hold sound. Each batch of
windows gets the share of its active windows, and its depth is chosen by bisection on the
coder's own size estimate (:func:`kancodec.entropy.estimate_bits`) when its
quantisation-aware steps begin; once every batch is fitted, one common offset to all
depths lands the whole file (:func:`land`), checked on the real coded size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from . import entropy, inr, postfilter
from .errors import OptionError
from .inrfile import coded_names, coded_weights, flatten

#: bytes a compact file takes besides its per-network tensors: 44 measured on a default
#: INR file (header and checksum); 140 leaves room for longer records (a hypernetwork's, an
#: odd config) so the budget errs on the small side
HEADER_BYTES = 140
#: the lowest and highest targets accepted, kbps
MIN_KBPS, MAX_KBPS = 1.0, 10_000.0
#: the KAN widths ``--kbps`` chooses among (widest first), and the coded bits per weight the
#: chosen one must get at least (see :func:`choose_config` for the measurements)
LADDER = ((48, 24, 12), (32, 16, 8), (24, 12, 6), (16, 8))
MIN_BITS_PER_WEIGHT = 5.5


def network_bytes(config: inr.INR) -> int:
    """The fixed cost of one network: gain and stream length (4 + 4 bytes), the post-filter's
    codes (half a byte per band), and per coded tensor its step (4) and the coder's m, K, j (2
    each); float-kept tensors in full."""
    shapes = inr.stored_shapes(config)
    return 8 + postfilter.BANDS // 2 + 10 * len(coded_names(config)) + sum(4 * math.prod(shapes[n]) for n in config.keep_float)


def check_kbps(kbps: float) -> float:
    if not (isinstance(kbps, (int, float)) and math.isfinite(kbps) and MIN_KBPS <= kbps <= MAX_KBPS):
        raise OptionError(f"{{kbps}} {kbps}: must be a bitrate from {MIN_KBPS:g} to {MAX_KBPS:g} kbps", "kbps")
    return float(kbps)


@dataclass
class Budget:
    """The weights' share of a target bitrate for one file."""

    payload_bits: float  # for all active windows together
    active: int  # windows (all channels) that hold sound

    @classmethod
    def of(cls, kbps: float, seconds: float, networks: int, active: int, config: inr.INR) -> "Budget":
        fixed = 8 * (HEADER_BYTES + networks * network_bytes(config))
        payload = kbps * 1000 * seconds - fixed
        if active and payload < 0.5 * active * config.n_params:  # under half a bit per weight
            least = (fixed + 0.5 * active * config.n_params) / seconds / 1000
            raise OptionError(f"{{kbps}} {kbps:g} is too low for this network: it needs at least about {least:.0f} kbps "
                              "here; raise {kbps}, lower {fit_sr}, or choose a smaller network ({hidden})",
                              "kbps", "fit_sr", "hidden")
        return cls(payload, active)

    def chooser(self, config: inr.INR, windows: int):
        """A function of a batch's compact parameters (``windows`` networks, all active) that
        returns the depth landing them on their share; :func:`kancodec.fit.fit` calls it."""
        share = self.payload_bits * windows / max(1, self.active)

        def choose(compact: dict[str, torch.Tensor]) -> float:
            return depth_for(flatten(config, compact), np.ones(windows, bool), share)
        return choose


def choose_config(kbps: float, seconds: float, networks: int, active: int) -> inr.INR:
    """The widest KAN of :data:`LADDER` whose weights get at least :data:`MIN_BITS_PER_WEIGHT`
    at ``kbps`` (else the narrowest). Measured with 300 steps on 1.5 s of speech from a Czech
    speaker (a tuning clip, not one of the clips the README reports), SI-SNR / PESQ:

    ========  ===================  ===================  ===================  ===================
    kbps      48, 24, 12           32, 16, 8            24, 12, 6            16, 8
    ========  ===================  ===================  ===================  ===================
    24        2.2 b/w -3.1 / 1.04  2.0 b/w 2.5 / 1.05   3.0 b/w 6.4 / 1.13   5.7 b/w 10.1 / 1.42
    48        2.2 b/w 5.0 / 1.09   4.1 b/w 10.1 / 1.41  6.3 b/w 13.4 / 2.04  11.6 b/w 10.6 / 1.48
    96        -                    8.3 b/w 14.7 / 2.91  12.7 b/w 13.9 / 2.26 13.2 b/w 10.6 / 1.49
    ========  ===================  ===================  ===================  ===================

    (b/w: coded bits per weight.) A second Czech speaker gave the same order by SI-SNR at
    every rate (24 kbps: 8.7 dB for [16, 8]; 48: 13.7 for [24, 12, 6]; 96: 16.5 for [32,
    16, 8]), though at 96 kbps PESQ favoured [48, 24, 12] (2.61 against 2.45). The best at each rate is the widest network that still
    gets 5.5 bits or more per weight: below that the depth's noise costs more than the
    width gains."""
    for hidden in LADDER:
        config = inr.make_config("kan", hidden=hidden)
        fixed = 8 * (HEADER_BYTES + networks * network_bytes(config))
        if kbps * 1000 * seconds - fixed >= MIN_BITS_PER_WEIGHT * max(1, active) * coded_weights(config):
            return config
    return config


def depth_for(params: list[np.ndarray], active: np.ndarray, bits_budget: float, offset=0.0) -> float:
    """The largest depth (to 0.01 bit) whose estimated coded size fits ``bits_budget``;
    ``offset``: depths per network added to it (see :func:`land`)."""
    lo, hi = entropy.MIN_BITS, entropy.MAX_BITS
    if entropy.estimate_bits(params, np.clip(lo + offset, lo, hi), active) > bits_budget:
        return lo
    while hi - lo > 0.01:
        mid = (lo + hi) / 2
        if entropy.estimate_bits(params, np.clip(mid + offset, entropy.MIN_BITS, hi), active) <= bits_budget:
            lo = mid
        else:
            hi = mid
    return lo


def land(params: list[np.ndarray], active: np.ndarray, depths: np.ndarray, budget: Budget,
         real_bits) -> np.ndarray:
    """Per-network depths ``(B,)`` for the final coding: ``depths`` (what each batch trained
    for) plus one common offset, chosen so the real coded size (``real_bits(depths)``, the
    entropy coder's output in bits) lands within 3 % under the budget where it can."""
    if not active.any():
        return depths
    rel = depths - depths[active].mean()

    def at(shift: float) -> np.ndarray:
        return np.clip(shift + rel, entropy.MIN_BITS, entropy.MAX_BITS)

    shift = depth_for(params, active, 0.99 * budget.payload_bits, offset=rel)
    real = real_bits(at(shift))
    for _ in range(4):  # the estimate is within ~1 %; correct by the measured slope of ~1 bit/weight per bit
        if 0.94 * budget.payload_bits <= real <= budget.payload_bits:
            break
        weights = sum(p.shape[1] for p in params) * int(active.sum())
        shift += (0.97 * budget.payload_bits - real) / max(1, weights)
        real = real_bits(at(shift))
    return at(shift)
