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
#: the coded bits per weight the network ``--kbps`` chooses must get at least (see :func:`choose_config`)
MIN_BITS_PER_WEIGHT = 5.5
#: targets below this many kbps fit :data:`HALF` windows, the others :data:`FULL` ones
HALF_WINDOW_BELOW = 64.0


@dataclass(frozen=True)
class Regime:
    """What ``--kbps`` fits at a range of targets, where no architecture is given: the window
    length (samples at the fitting rate; None: the default), the positional encoding's length
    L, and the KAN widths to choose among (widest first)."""

    chunk: int | None
    n_freqs: int
    ladder: tuple[tuple[int, ...], ...]


#: the paper's window and L, as measured for 96 kbps (see :func:`choose_config`)
FULL = Regime(None, 10, ((48, 24, 12), (32, 16, 8), (24, 12, 6), (16, 8)))
#: half the paper's window, L = 7 and narrower networks, as measured for 24 and 48 kbps
HALF = Regime(16384, 7, ((32, 16, 8), (28, 14, 7), (24, 12, 6), (20, 10, 5), (16, 8, 4), (12, 6, 3), (10, 5), (8, 4)))


def regime(kbps: float) -> Regime:
    """The :class:`Regime` for a ``--kbps`` target."""
    return HALF if kbps < HALF_WINDOW_BELOW else FULL


def network_bytes(config: inr.INR, post_blocks: int) -> int:
    """The fixed cost of one network: gain and stream length (4 + 4 bytes), the post-filter's
    codes (half a byte per band in each of ``post_blocks`` blocks; 0: no post-filter), and per
    coded tensor its step (4) and the coder's m, K, j (2 each); float-kept tensors in full."""
    shapes = inr.stored_shapes(config)
    return (8 + post_blocks * postfilter.BANDS // 2 + 10 * len(coded_names(config))
            + sum(4 * math.prod(shapes[n]) for n in config.keep_float))


def fixed_bits(config: inr.INR, networks: int, post_blocks: int) -> int:
    """Bits a file of ``networks`` networks costs besides its coded weights: the header and
    each network's :func:`network_bytes`."""
    return 8 * (HEADER_BYTES + networks * network_bytes(config, post_blocks))


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
    def of(cls, kbps: float, seconds: float, networks: int, active: int, config: inr.INR,
           post_blocks: int) -> "Budget":
        fixed = fixed_bits(config, networks, post_blocks)
        payload = kbps * 1000 * seconds - fixed
        if active and payload < 0.5 * active * config.n_params:  # under half a bit per weight
            least = (fixed + 0.5 * active * config.n_params) / seconds / 1000
            raise OptionError(f"{{kbps}} {kbps:g} is too low for this network: it needs at least about {least:.0f} kbps "
                              "here; raise {kbps}, lower {fit_sr}, or choose a smaller network ({hidden})",
                              "kbps", "fit_sr", "hidden")
        return cls(payload, active)

    def chooser(self, config: inr.INR, windows: int):
        """A function of a batch's compact parameters (``windows`` networks, all active) and
        their allocation ``(windows, T)`` that returns the depth landing them on their share;
        :func:`kancodec.fit.fit` calls it."""
        share = self.payload_bits * windows / max(1, self.active)

        def choose(compact: dict[str, torch.Tensor], scales=None) -> float:
            return depth_for(flatten(config, compact), np.ones(windows, bool), share, scales=scales)
        return choose


def choose_config(kbps: float, seconds: float, networks: int, active: int, post_blocks: int) -> inr.INR:
    """The widest KAN of the ladder of :func:`regime` (with its positional encoding) whose
    weights get at least :data:`MIN_BITS_PER_WEIGHT` at ``kbps`` (else the narrowest), after
    the fixed costs of ``networks`` networks with ``post_blocks`` blocks of post-filter codes.

    Measured with 300 steps on 1.5 s crops of tuning speech (never reported elsewhere), mean
    PESQ of the decoded file. First at ``--kbps 48`` on four clips of Fish Fillets' small fish
    (fillets-cs, seeds 0 / 1 where two were run): one 32,768-sample window of [24, 12, 6]
    with the paper's L = 10 (:data:`FULL`) 2.746 / 2.748; L = 6, 8, 12, 14, 16 gave 2.64,
    2.84 / 2.78, 2.51, 2.38, 2.22; FINER and SIREN [64, 64, 64] 2.13 and 2.60 (their own
    loss, without the log-mel term); [32, 16, 8] with grid 5 2.75. Two 16,384-sample windows
    of [16, 8, 4]: L = 10 2.88 / 2.89, L = 8 3.13 / 3.20, **L = 7 3.26 / 3.24** (:data:`HALF`),
    L = 6 3.20. At L = 8 the rung wider ([20, 10, 5], under 5.5 coded bits per weight there)
    gave 2.55 and the rung narrower ([12, 6, 3]) 2.62 on two clips; three 12,288-sample
    windows of [16, 8, 4] 2.11 (three clips); 8,192-sample windows of [8, 4] 2.53 and of
    [12, 6] 1.97. Then on eight clips of four voices (two of each fish, and asterisk's
    Spanish and Canadian French prompts), FULL against HALF: 48 kbps 2.655 against 2.781
    (HALF better on seven clips, 0.01 lower on one); 96 kbps, on the first four clips,
    4.005 against 3.477 (FULL 3.689 on all eight); 24 kbps 1.782 against 1.797 (HALF
    chose [10, 5]). So HALF below 64 kbps, where FULL's network is [24, 12, 6] or narrower
    (the crossing between 48 and 96 kbps is not measured more finely). Re-measured with the
    post-filter and the allocation between tensors, on 1.5 s crops (one FULL window) of
    those eight clips and four of tuxpaint's voices (Spanish, Russian, Catalan, Bulgarian:
    recordings with a noise floor and much energy below 300 Hz), FULL gave 2.916 against
    2.849 at 48 kbps (the eight 3.021 against 3.094, the four 2.706 against 2.360) and
    2.078 against 2.057 at 24; but on whole files of tuning voices (2.0-3.6 s) HALF won
    by far: 3.20, 3.22, 3.80 against 2.49, 2.78, 2.85 on the first three (fillets-cs),
    where FULL's windows tile a file coarsely (2 windows of [16, 8] for 2.05 s, against 3
    of [16, 8, 4]). Files have natural lengths, so HALF stays. Within a regime the rule
    stays: the widest network that keeps 5.5 coded bits or more per weight (below that the
    depth's noise costs more than the width gains), [16, 8, 4] at 48 kbps. The FULL ladder
    (32,768-sample windows, L = 10) measured the same order on one tuning clip at 24, 48 and
    96 kbps, SI-SNR / PESQ:

    ========  ===================  ===================  ===================  ===================
    kbps      48, 24, 12           32, 16, 8            24, 12, 6            16, 8
    ========  ===================  ===================  ===================  ===================
    24        2.2 b/w -3.1 / 1.04  2.0 b/w 2.5 / 1.05   3.0 b/w 6.4 / 1.13   5.7 b/w 10.1 / 1.42
    48        2.2 b/w 5.0 / 1.09   4.1 b/w 10.1 / 1.41  6.3 b/w 13.4 / 2.04  11.6 b/w 10.6 / 1.48
    96        -                    8.3 b/w 14.7 / 2.91  12.7 b/w 13.9 / 2.26 13.2 b/w 10.6 / 1.49
    ========  ===================  ===================  ===================  ===================

    (b/w: coded bits per weight.) A second Czech speaker gave the same order by SI-SNR at
    every rate (24 kbps: 8.7 dB for [16, 8]; 48: 13.7 for [24, 12, 6]; 96: 16.5 for [32,
    16, 8]), though at 96 kbps PESQ favoured [48, 24, 12] (2.61 against 2.45)."""
    r = regime(kbps)
    for hidden in r.ladder:
        config = inr.make_config("kan", hidden=hidden, n_freqs=r.n_freqs)
        fixed = fixed_bits(config, networks, post_blocks)
        if kbps * 1000 * seconds - fixed >= MIN_BITS_PER_WEIGHT * max(1, active) * coded_weights(config):
            return config
    return config


def depth_for(params: list[np.ndarray], active: np.ndarray, bits_budget: float, offset=0.0, scales=None) -> float:
    """The largest depth (to 0.01 bit) whose estimated coded size fits ``bits_budget``;
    ``offset``: depths per network added to it (see :func:`land`); ``scales``: the
    allocation ``(B, T)`` (:mod:`kancodec.allocate`; None: 1)."""
    lo, hi = entropy.MIN_BITS, entropy.MAX_BITS
    if entropy.estimate_bits(params, np.clip(lo + offset, lo, hi), active, scales) > bits_budget:
        return lo
    while hi - lo > 0.01:
        mid = (lo + hi) / 2
        if entropy.estimate_bits(params, np.clip(mid + offset, entropy.MIN_BITS, hi), active, scales) <= bits_budget:
            lo = mid
        else:
            hi = mid
    return lo


def land(params: list[np.ndarray], active: np.ndarray, depths: np.ndarray, budget: Budget,
         real_bits, scales=None) -> np.ndarray:
    """Per-network depths ``(B,)`` for the final coding: ``depths`` (what each batch trained
    for) plus one common offset, chosen so the real coded size (``real_bits(depths)``, the
    entropy coder's output in bits) lands within 3 % under the budget where it can."""
    if not active.any():
        return depths
    rel = depths - depths[active].mean()

    def at(shift: float) -> np.ndarray:
        return np.clip(shift + rel, entropy.MIN_BITS, entropy.MAX_BITS)

    shift = depth_for(params, active, 0.99 * budget.payload_bits, offset=rel, scales=scales)
    real = real_bits(at(shift))
    for _ in range(4):  # the estimate is within ~1 %; correct by the measured slope of ~1 bit/weight per bit
        if 0.94 * budget.payload_bits <= real <= budget.payload_bits:
            break
        weights = sum(p.shape[1] for p in params) * int(active.sum())
        shift += (0.97 * budget.payload_bits - real) / max(1, weights)
        real = real_bits(at(shift))
    return at(shift)
