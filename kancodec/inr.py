"""Implicit neural representations: configs and batched functional forward passes.

Every INR is a frozen config plus a dict of parameter tensors that all carry a leading
batch axis ``B`` (one network per window and channel). ``forward(config, params, t)``
evaluates all ``B`` networks on one shared time grid ``t`` in ``[-1, 1]``: windows are
fitted on the same grid, so whatever depends only on ``t`` (the positional encoding and
the first KAN layer's basis) is computed once, not ``B`` times, and during a fit it is
computed once for all steps (see :func:`input_features`).

A config class provides ``arch`` (its registry name), ``shapes()``, ``init(batch,
generator)``, ``features(t)`` and ``forward(params, feats)``; :class:`INR` supplies the
rest. The paper's KAN lives here, its MLP baselines in :mod:`kancodec.mlp`. Fitting,
quantisation, the file format and decoding use only the functions of this module, so they
work for every architecture.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

import torch

from .errors import KanError, OptionError
from .inrbase import INR
from .kan import init_kan_layer, kan_features, kan_layer, kan_weight, positional_encoding
from .mlp import MLP_CONFIGS
from .runtime import Compiled


@dataclass(frozen=True)
class KANConfig(INR):
    """The paper's KAN INR: positional encoding of length ``n_freqs`` then KAN layers.

    Defaults are the paper's Table 1 model (L=10, hidden [48, 24, 12], G=10, k=2):
    33,768 parameters.
    """

    n_freqs: int = 10
    hidden: tuple[int, ...] = (48, 24, 12)
    grid: int = 10
    order: int = 2
    grid_range: tuple[float, float] = (-1.0, 1.0)
    arch: str = field(default="kan", init=False)
    preset_lr = True
    hyper_target = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        object.__setattr__(self, "grid_range", tuple(float(v) for v in self.grid_range))
        if self.n_freqs < 1 or self.grid < 1 or not 1 <= self.order <= 5:
            raise KanError(f"invalid KAN config: n_freqs={self.n_freqs} grid={self.grid} order={self.order} "
                           "(need n_freqs >= 1, grid >= 1, 1 <= order <= 5)")
        if not self.hidden or min(self.hidden) < 1:
            raise KanError(f"invalid KAN hidden sizes {list(self.hidden)}: give one or more positive widths, e.g. 48,24,12")

    @property
    def dims(self) -> list[int]:
        return [2 * self.n_freqs, *self.hidden, 1]

    def shapes(self) -> dict[str, tuple[int, ...]]:
        out: dict[str, tuple[int, ...]] = {}
        for i, (a, b) in enumerate(zip(self.dims[:-1], self.dims[1:])):
            out[f"l{i}.base"] = (a, b)
            out[f"l{i}.spline"] = (a, self.grid + self.order, b)
            out[f"l{i}.scale"] = (a, b)
        return out

    def init(self, batch: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        params: dict[str, torch.Tensor] = {}
        for i, (a, b) in enumerate(zip(self.dims[:-1], self.dims[1:])):
            for name, value in init_kan_layer(batch, a, b, self.grid, self.order, generator=generator).items():
                params[f"l{i}.{name}"] = value
        return params

    def features(self, t: torch.Tensor) -> torch.Tensor:
        """The first layer's B-spline basis of the positional encoding: ``(N,)`` -> ``(N, F)``."""
        lo, hi = self.grid_range
        return kan_features(positional_encoding(t, self.n_freqs), self.grid, self.order, lo, hi)

    def forward(self, params: dict[str, torch.Tensor], feats: torch.Tensor) -> torch.Tensor:
        lo, hi = self.grid_range
        w0 = kan_weight(params["l0.base"], params["l0.spline"], params["l0.scale"])
        x = torch.matmul(feats, w0)  # (N, F) @ (B, F, O) -> (B, N, O)
        for i in range(1, len(self.dims) - 1):
            x = kan_layer(x, params[f"l{i}.base"], params[f"l{i}.spline"], params[f"l{i}.scale"],
                          self.grid, self.order, lo, hi)
        return x.squeeze(-1)

    def compact(self, params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The per-edge spline scale folded into the spline coefficients (``c * w_s``): the
        function is unchanged and one value per edge (7% of the default model) is saved."""
        out = {}
        for name, p in params.items():
            if name.endswith(".scale"):
                continue
            if name.endswith(".spline"):
                p = p * params[name[: -len("spline")] + "scale"].unsqueeze(2)
            out[name] = p
        return out

    def expand(self, stored: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        params = dict(stored)
        for name in self.shapes():
            if name.endswith(".scale"):
                params[name] = torch.ones_like(stored[name[: -len("scale")] + "base"])
        return params

    def stored_shapes(self) -> dict[str, tuple[int, ...]]:
        return {n: s for n, s in self.shapes().items() if not n.endswith(".scale")}

    def describe(self) -> str:
        return f"kan L={self.n_freqs} dims={self.dims} G={self.grid} k={self.order}"


#: every INR family by its ``arch`` name: the paper's KAN first, then its baselines
INR_CONFIGS: dict[str, type] = {"kan": KANConfig, **MLP_CONFIGS}
ARCHS = tuple(INR_CONFIGS)


def config_from_dict(d: dict) -> INR:
    """Rebuild a config saved by ``to_dict`` (the ``arch`` key picks the class)."""
    d = dict(d)
    arch = d.pop("arch", "kan")
    if arch not in INR_CONFIGS:
        raise KanError(f"unknown INR architecture {arch!r}; known: {', '.join(INR_CONFIGS)}")
    try:
        return INR_CONFIGS[arch](**d)
    except (TypeError, ValueError) as e:
        raise KanError(f"bad {arch} config {json.dumps(d, sort_keys=True)}: {e}") from None


def make_config(arch: str = "kan", **settings) -> INR:
    """The ``arch`` family's default config with ``settings`` changed (``None`` values ignored).

    Raises KanError naming the valid families, or the settings that family has.
    """
    if arch not in INR_CONFIGS:
        raise OptionError(f"{{arch}} {arch!r}: choose one of: {', '.join(INR_CONFIGS)}", "arch")
    cls = INR_CONFIGS[arch]
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    given = {k: v for k, v in settings.items() if v is not None}
    wrong = [k for k in given if k not in names]
    if wrong:
        raise OptionError(", ".join("{%s}" % k for k in wrong) + f" does not apply to {{arch}} {arch}; its settings "
                          f"are: {', '.join(names)}", "arch", *wrong)
    try:
        return cls(**given)
    except (TypeError, ValueError) as e:
        raise KanError(f"bad {arch} settings {given}: {e}") from None


def init_params(config: INR, batch: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random initial parameters for ``batch`` networks, reproducible from ``seed``.

    Returns:
        name -> ``(batch, *config.shapes()[name])`` float32 tensors on the CPU.
    """
    return config.init(batch, torch.Generator().manual_seed(seed))


def input_features(config: INR, t: torch.Tensor) -> torch.Tensor:
    """What the first layer sees, shared by every network: ``(N,)`` times -> ``(N, F)`` features."""
    return config.features(t)


def forward_features(config: INR, params: dict[str, torch.Tensor], feats: torch.Tensor) -> torch.Tensor:
    """Evaluate ``B`` networks from precomputed :func:`input_features`.

    Args:
        feats: ``(N, F)`` shared by all networks, or ``(B, N, F)``, one grid per network.
    Returns:
        ``(B, N)`` amplitudes.
    """
    return config.forward(params, feats)


def forward_fn(use_compile: bool):
    """:func:`forward_features`, compiled when ``use_compile`` (10-30 s once per shape on CPU)."""
    return Compiled(forward_features) if use_compile else forward_features


def features_fn(use_compile: bool):
    """:func:`input_features`, compiled when ``use_compile``: the first layer's basis on a
    whole window's grid is ~20 ms eager on CPU, a third of a one-window decode."""
    return Compiled(input_features) if use_compile else input_features


def forward_chunked(config: INR, params: dict[str, torch.Tensor], feats: torch.Tensor,
                    fn=forward_features, rows: int = 4096) -> torch.Tensor:
    """:func:`forward_features` over slices of the time axis: ``(N, F)`` or ``(B, N, F)`` -> ``(B, N)``.

    Why: the basis tensors of a hidden layer are ``B × N × I × (G + k)`` floats. Kept
    under ~32 MB (``B × slice ≈ rows``), glibc serves them from its heap instead of fresh
    zeroed pages, and the step runs 1.5-4x faster on CPU (measured; see ``bench``).
    ``fn`` may be a compiled version of :func:`forward_features`.
    """
    batch = next(iter(params.values())).shape[0]
    size = max(64, rows // batch)
    if feats.shape[-2] <= size:
        return fn(config, params, feats)
    return torch.cat([fn(config, params, c) for c in feats.split(size, -2)], dim=-1)


def forward(config: INR, params: dict[str, torch.Tensor], t: torch.Tensor) -> torch.Tensor:
    """Evaluate ``B`` networks at times ``t`` (``(N,)`` in ``[-1, 1]``) -> ``(B, N)``."""
    return forward_chunked(config, params, input_features(config, t))


def compact(config: INR, params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The parameters worth storing (see each config's ``compact``); :func:`expand` inverts it."""
    return config.compact(params)


def expand(config: INR, stored: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse of :func:`compact`: the full parameter dict."""
    return config.expand(stored)


def stored_shapes(config: INR) -> dict[str, tuple[int, ...]]:
    """Shapes (without batch axis) of what :func:`compact` returns."""
    return config.stored_shapes()
