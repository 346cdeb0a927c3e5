"""The paper's baseline INRs, batched like the KAN: NeRF, SIREN, RFF, WIRE and FINER.

All are MLPs on the time ``t`` in ``[-1, 1]`` that differ in how ``t`` enters and in the
activation; sizes give the paper's parameter budgets (NeRF ~33k, SIREN ~31k, RFF ~39k,
WIRE ~31k, FINER ~31k). Parameters: ``l{i}.w`` ``(B, in, out)`` and ``l{i}.b``
``(B, 1, out)`` (a leading ``2`` axis of real and imaginary parts for WIRE's complex
layers), so quantisation gets one step per layer input.

Frequencies, scales and learning rates were chosen from measurement: four 32,768-sample
windows of Czech speech (fillets-ng-data-cs, 22.05 kHz), 100 steps, L1 + 0.01 mel-STFT,
mean SI-SNR of the fit (audio needs far higher first-layer frequencies than images: a
window spans thousands of cycles):

- SIREN (ω₀, lr): (3000, 1e-4) 5.7 dB, (1000, 1e-4) 5.9, (10000, 1e-4) -1.8, (3000, 3e-4)
  11.5, (2000, 3e-4) 11.1, (3000, 1e-3) **12.2**.
- FINER (ω₀, k, lr): (3000, 1, 1e-4) 2.7, (3000, 5, 1e-4) -6.0, (3000, 1, 3e-4) 11.1,
  (2000, 1, 3e-4) **13.4**.
- NeRF (L, lr): (14, 1e-3) -15.8, (14, 3e-3) -6.3, (12, 3e-3) 0.9, (14, 1e-2) 0.1,
  (10, 1e-2) 2.7, (12, 1e-2) **2.9**.
- RFF (σ, lr): (2000, 1e-3) -8.4, (5000, 3e-3) -6.7, (1000, 3e-3) 4.7, (500, 3e-3) 9.3,
  (250, 3e-3) **10.7**.
- WIRE (ω₀, ω, s): see :class:`WIREConfig`; (300, 5, 3) at lr 1e-3.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from .errors import KanError
from .inrbase import INR
from .kan import positional_encoding


def _uniform(g: torch.Generator, bound: float, *shape: int) -> torch.Tensor:
    return (torch.rand(*shape, generator=g) * 2 - 1) * bound


def _linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(N, I)`` shared or ``(B, N, I)`` inputs, ``(B, I, O)`` weights, ``(B, 1, O)`` bias -> ``(B, N, O)``."""
    return torch.matmul(x, w) + b


class _MLP(INR):
    """Shared shape bookkeeping: ``dims = [inputs, *hidden, 1]``."""

    hidden: tuple[int, ...]
    #: the first layer feeds a phase scaled by ω₀ (the sine and wavelet families): stored in
    #: float32 whatever the bit depth, see :attr:`keep_float`
    phase_first_layer = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        if not self.hidden or min(self.hidden) < 1:
            raise KanError(f"invalid {self.arch} hidden sizes {list(self.hidden)}: give positive widths, e.g. 100,100")

    @property
    def keep_float(self) -> frozenset[str]:
        """With :attr:`phase_first_layer`, the first layer stays float32 in the file: its phase is
        ω₀ (300-3000) times the weights, so 8-bit steps (~1/128 of the range) meant errors of
        many radians; measured: SIREN -43.6 dB SI-SNR at 8 bits on 20 speech clips against
        14.6 dB on the same clips once this layer (200 values, ~0.6% of the file) was kept in float."""
        return frozenset({"l0.w", "l0.b"}) if self.phase_first_layer else frozenset()

    @property
    def n_inputs(self) -> int:
        return 1

    @property
    def dims(self) -> list[int]:
        return [self.n_inputs, *self.hidden, 1]

    def shapes(self) -> dict[str, tuple[int, ...]]:
        out: dict[str, tuple[int, ...]] = {}
        for i, (a, b) in enumerate(zip(self.dims[:-1], self.dims[1:])):
            out[f"l{i}.w"] = (a, b)
            out[f"l{i}.b"] = (1, b)
        return out

    def features(self, t: torch.Tensor) -> torch.Tensor:
        return t.unsqueeze(-1)

    def _relu_mlp(self, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        n = len(self.dims) - 1
        for i in range(n):
            x = _linear(x, params[f"l{i}.w"], params[f"l{i}.b"])
            if i < n - 1:
                x = torch.relu(x)
        return x.squeeze(-1)

    def _default_init(self, batch: int, g: torch.Generator) -> dict[str, torch.Tensor]:
        """``torch.nn.Linear``'s initialisation: weights and biases ``U(-1/√in, 1/√in)``."""
        params = {}
        for i, (a, b) in enumerate(zip(self.dims[:-1], self.dims[1:])):
            params[f"l{i}.w"] = _uniform(g, 1 / math.sqrt(a), batch, a, b)
            params[f"l{i}.b"] = _uniform(g, 1 / math.sqrt(a), batch, 1, b)
        return params


@dataclass(frozen=True)
class NeRFConfig(_MLP):
    """Positional encoding (as the KAN's) + ReLU MLP. Default: L=12, 4×100 -> 32,901 params."""

    n_freqs: int = 12
    hidden: tuple[int, ...] = (100, 100, 100, 100)
    arch: str = field(default="nerf", init=False)
    lr = 1e-2
    hyper_target = True

    @property
    def n_inputs(self) -> int:
        return 2 * self.n_freqs

    def init(self, batch: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        return self._default_init(batch, generator)

    def features(self, t: torch.Tensor) -> torch.Tensor:
        return positional_encoding(t, self.n_freqs)

    def forward(self, params: dict[str, torch.Tensor], feats: torch.Tensor) -> torch.Tensor:
        return self._relu_mlp(params, feats)


@dataclass(frozen=True)
class RFFConfig(_MLP):
    """Random Fourier features ``[cos 2π b t, sin 2π b t]``, ``b ~ N(0, σ²)`` fixed, + ReLU MLP.

    ``b`` is drawn from NumPy's PCG64 generator seeded with ``seed`` (stored in the config,
    so the decoder rebuilds the same features). Default: 64 features, 2×144 -> 39,601 params.
    """

    n_features: int = 64
    sigma: float = 250.0
    seed: int = 0
    hidden: tuple[int, ...] = (144, 144)
    arch: str = field(default="rff", init=False)
    lr = 3e-3

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.n_features < 1 or self.sigma <= 0:
            raise KanError(f"invalid rff config: n_features={self.n_features} sigma={self.sigma} (both must be > 0)")

    @property
    def n_inputs(self) -> int:
        return 2 * self.n_features

    def init(self, batch: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        return self._default_init(batch, generator)

    def features(self, t: torch.Tensor) -> torch.Tensor:
        b = np.random.default_rng(self.seed).normal(0.0, self.sigma, self.n_features)
        ang = 2 * math.pi * t.double().unsqueeze(-1) * torch.from_numpy(b).to(t.device)
        return torch.cat([ang.cos(), ang.sin()], -1).to(t.dtype)

    def forward(self, params: dict[str, torch.Tensor], feats: torch.Tensor) -> torch.Tensor:
        return self._relu_mlp(params, feats)


@dataclass(frozen=True)
class SIRENConfig(_MLP):
    """``sin(ω₀ (W t + b))`` first layer, ``sin(ω (W x + b))`` hidden layers, linear output,
    with SIREN's initialisation. Default: 4×100 -> 30,601 params."""

    hidden: tuple[int, ...] = (100, 100, 100, 100)
    omega_first: float = 3000.0
    omega: float = 30.0
    arch: str = field(default="siren", init=False)
    lr = 1e-3
    phase_first_layer = True

    def init(self, batch: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        params = self._default_init(batch, generator)  # biases as nn.Linear
        for i, (a, b) in enumerate(zip(self.dims[:-1], self.dims[1:])):
            bound = 1 / a if i == 0 else math.sqrt(6 / a) / self.omega
            params[f"l{i}.w"] = _uniform(generator, bound, batch, a, b)
        return params

    def _act(self, z: torch.Tensor, omega: float) -> torch.Tensor:
        return torch.sin(omega * z)

    def forward(self, params: dict[str, torch.Tensor], feats: torch.Tensor) -> torch.Tensor:
        n = len(self.dims) - 1
        x = feats
        for i in range(n):
            x = _linear(x, params[f"l{i}.w"], params[f"l{i}.b"])
            if i < n - 1:
                x = self._act(x, self.omega_first if i == 0 else self.omega)
        return x.squeeze(-1)


@dataclass(frozen=True)
class FINERConfig(SIRENConfig):
    """SIREN with FINER's variable-periodic activation ``sin(ω (|z| + 1) z)`` (the scale
    ``|z| + 1`` carries no gradient, as in FINER) and a wide first-layer bias ``U(-k, k)``.
    Default: 4×100 -> 30,601 params."""

    omega_first: float = 2000.0
    first_bias: float = 1.0
    arch: str = field(default="finer", init=False)
    lr = 3e-4

    def init(self, batch: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        params = super().init(batch, generator)
        params["l0.b"] = _uniform(generator, self.first_bias, batch, 1, self.hidden[0])
        return params

    def _act(self, z: torch.Tensor, omega: float) -> torch.Tensor:
        return torch.sin(omega * (z.detach().abs() + 1) * z)


@dataclass(frozen=True)
class WIREConfig(_MLP):
    """WIRE: complex Gabor wavelet ``exp(j ω z − |s z|²)`` after every hidden layer; the
    first layer is real, the others complex (real and imaginary parts stored on a leading
    axis of 2), the output is the real part. Default: 4×71 -> 30,958 params."""

    hidden: tuple[int, ...] = (71, 71, 71, 71)
    omega_first: float = 300.0
    omega: float = 5.0
    scale: float = 3.0
    arch: str = field(default="wire", init=False)
    lr = 1e-3
    phase_first_layer = True

    def shapes(self) -> dict[str, tuple[int, ...]]:
        out = super().shapes()
        for i in range(1, len(self.dims) - 1):
            out[f"l{i}.w"] = (2, *out[f"l{i}.w"])
            out[f"l{i}.b"] = (2, *out[f"l{i}.b"])
        return out

    def init(self, batch: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        params = {}
        for name, shape in self.shapes().items():
            fan_in = shape[-2] if name.endswith(".w") else self.dims[int(name[1:name.index(".")])]
            params[name] = _uniform(generator, 1 / math.sqrt(fan_in), batch, *shape)
        return params

    def _gabor(self, zr: torch.Tensor, zi: torch.Tensor, omega: float) -> tuple[torch.Tensor, torch.Tensor]:
        # exp(j ω z − s²|z|²) with z = zr + j zi: magnitude exp(−ω zi − s²|z|²), phase ω zr
        mag = torch.exp(-omega * zi - self.scale ** 2 * (zr * zr + zi * zi))
        return mag * torch.cos(omega * zr), mag * torch.sin(omega * zr)

    def forward(self, params: dict[str, torch.Tensor], feats: torch.Tensor) -> torch.Tensor:
        n = len(self.dims) - 1
        z = _linear(feats, params["l0.w"], params["l0.b"])
        xr, xi = self._gabor(z, torch.zeros_like(z), self.omega_first)
        for i in range(1, n):
            w, b = params[f"l{i}.w"], params[f"l{i}.b"]
            zr = torch.matmul(xr, w[:, 0]) - torch.matmul(xi, w[:, 1]) + b[:, 0]
            if i == n - 1:
                return zr.squeeze(-1)
            zi = torch.matmul(xr, w[:, 1]) + torch.matmul(xi, w[:, 0]) + b[:, 1]
            xr, xi = self._gabor(zr, zi, self.omega)
        raise AssertionError("unreachable: WIRE has at least one hidden layer")


MLP_CONFIGS: dict[str, type] = {"nerf": NeRFConfig, "siren": SIRENConfig, "rff": RFFConfig,
                                "wire": WIREConfig, "finer": FINERConfig}
