"""A learned start for fitting: universal INR weights θ meta-learned with Reptile.

FewSound's first half (``θ' = θ + H(…)``) without the hypernetwork: θ is trained so that a
few fitting steps *from θ* do well on windows of real speech. One meta-step (Reptile, Nichol
et al. 2018): copy θ into one network per training window, fit each for ``inner_steps``
steps with the codec's own optimiser and schedule (AdamW, warm-up and cosine decay,
L1 + mel-STFT), then move θ a step ``ε`` towards the mean of the fitted networks. The move
is taken by SGD on the surrogate ``½ Σ ‖θ − φᵢ‖² / B`` (its gradient is ``θ − mean φ``),
so ``ε`` is the training loop's learning rate with its one-cycle schedule, and checkpoints,
resume, validation and ``torchrun`` come from :mod:`kancodec.train`.

Cheaper signal on CPU, as in hypernetwork training: each inner step takes its loss on a
random ``loss_window``-sample stretch of the window (a new stretch every step), so the
networks still learn the whole window over the steps. Validation fits held-out windows
whole, for ``inner_steps`` steps, exactly as ``kancodec encode --steps N`` does.

θ is stored as a model file of kind ``"theta"`` (:mod:`kancodec.modelfile`): its config
names the target INR, the window and the fitting rate it was learned for; its tensors are
the INR's parameters without the batch axis (float32).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import inr
from .errors import FormatError, KanError, OptionError
from .fit import FitSettings, fit, time_grid
from .loss import SpectralLoss, fit_loss
from .modelfile import ModelRef, open_model, save_model

KIND = "theta"


@dataclass(frozen=True)
class ThetaConfig:
    """What θ is for (saved in the model file): the target INR, the window and fitting rate,
    and the inner fit it was meta-learned through."""

    target: dict = field(default_factory=lambda: inr.KANConfig().to_dict())
    window: int = 32768
    sample_rate: int = 22050
    inner_steps: int = 16
    inner_lr: float = 5e-2  # the presets' peak learning rate

    def __post_init__(self) -> None:
        inr.config_from_dict(self.target)  # KanError if it is not an INR config
        if self.inner_steps < 1 or not 0 < self.inner_lr <= 1:
            raise OptionError(f"{{inner_steps}} {self.inner_steps} / {{inner_lr}} {self.inner_lr}: need at least one "
                              "step and a learning rate in (0, 1]", "inner_steps", "inner_lr")

    @property
    def inr(self) -> inr.INR:
        return inr.config_from_dict(self.target)

    def to_dict(self) -> dict:
        return asdict(self)


class Theta(torch.nn.Module):
    """θ as parameters ``{name: (1, *shape)}`` (names with ``/`` for ``.``: torch's rule)."""

    def __init__(self, config: ThetaConfig, seed: int = 0):
        super().__init__()
        self.config = config
        start = inr.init_params(config.inr, 1, seed=seed)
        self.values = torch.nn.ParameterDict({k.replace(".", "/"): torch.nn.Parameter(v) for k, v in start.items()})

    def params(self, batch: int) -> dict[str, torch.Tensor]:
        """θ repeated for ``batch`` networks: ``{name: (batch, *shape)}`` (copies, detached)."""
        return {k.replace("/", "."): v.detach().expand(batch, *v.shape[1:]).clone() for k, v in self.values.items()}

    def forward(self, fitted: dict[str, torch.Tensor]) -> torch.Tensor:
        """Reptile's surrogate ``½ Σᵢ ‖θ − φᵢ‖² / B`` for ``{name: (B, *shape)}`` fitted networks."""
        total = 0.0
        for k, v in self.values.items():
            phi = fitted[k.replace("/", ".")].detach()
            total = total + 0.5 * (v - phi).square().sum() / phi.shape[0]
        return total


def inner_settings(config: ThetaConfig, spectral_weight: float, steps: int | None = None) -> FitSettings:
    """The fit that θ is trained through (and validated with): the presets' schedule over ``steps``."""
    return FitSettings(steps=config.inner_steps if steps is None else steps, lr=config.inner_lr, spectral_weight=spectral_weight)


def adapt(config: ThetaConfig, start: dict[str, torch.Tensor], x: torch.Tensor, settings: FitSettings,
          loss_window: int, rng: np.random.Generator, fwd=inr.forward_features,
          feats: torch.Tensor | None = None, spectral: SpectralLoss | None = None) -> dict[str, torch.Tensor]:
    """Fit ``B`` networks from ``start`` to ``(B, window)`` windows for ``settings.steps`` steps,
    each step's loss on a random ``loss_window`` stretch (the same stretch for all windows of
    the step) -> the fitted ``{name: (B, *shape)}``, detached."""
    target = config.inr
    if feats is None:
        feats = inr.input_features(target, time_grid(x.shape[1], x.device))
    spectral = spectral or SpectralLoss(config.sample_rate)
    params = {k: v.detach().clone().requires_grad_(True) for k, v in start.items()}
    opt = torch.optim.AdamW(list(params.values()), lr=settings.lr, weight_decay=settings.weight_decay)
    for step in range(settings.steps):
        for group in opt.param_groups:
            group["lr"] = settings.lr_at(step)
        off = int(rng.integers(0, x.shape[1] - loss_window + 1))
        pred = inr.forward_chunked(target, params, feats[off:off + loss_window], fwd)
        loss = fit_loss(pred, x[:, off:off + loss_window], spectral, settings.l1_weight, settings.spectral_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return {k: v.detach() for k, v in params.items()}


def fit_from(theta: Theta, x: torch.Tensor, steps: int, spectral_weight: float, compile: bool = False):
    """``kancodec encode --steps N`` from θ on ``(B, window)`` windows: the codec's own fit."""
    c = theta.config
    return fit(c.inr, x, inner_settings(c, spectral_weight, steps), c.sample_rate, init=theta.params(len(x)),
               compile=compile)


def save(theta: Theta, path, train: dict | None = None, force: bool = False) -> int:
    """Write θ as a model file (float32: the default KAN's 33,768 weights make 137 kB)."""
    tensors = {k.replace("/", "."): v.detach()[0] for k, v in theta.values.items()}
    return save_model(path, KIND, theta.config.to_dict(), tensors, train, force)


def load(name="theta-kan", device: torch.device | str = "cpu") -> tuple[Theta, ModelRef]:
    """Find (:func:`~kancodec.modelfile.find_model`), check and load θ -> ``(theta, ref)``."""
    ref, tensors = open_model(name, KIND)
    try:
        theta = Theta(ThetaConfig(**ref.config))
        shapes = theta.config.inr.shapes()
        if set(tensors) != set(shapes) or any(tuple(tensors[k].shape) != tuple(s) for k, s in shapes.items()):
            raise KanError("tensors do not match the target's shapes")
        values = {k: tensors[k].float() for k in shapes}
        if not all(bool(torch.isfinite(v).all()) for v in values.values()):
            raise KanError("non-finite weights")
        with torch.no_grad():
            for k, v in values.items():
                theta.values[k.replace(".", "/")].copy_(v.unsqueeze(0))
    except (TypeError, KanError, RuntimeError) as e:
        raise FormatError(f"{ref.path}: model does not match its config ({str(e).splitlines()[0][:100]}); "
                          "retrain or restore it") from None
    return theta.to(device).eval(), ref


def default_output() -> Path:
    from .modelfile import user_models_dir

    return user_models_dir() / "theta-kan.safetensors"
