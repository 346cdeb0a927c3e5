"""FewSound: a hypernetwork that predicts INR weights from raw audio in one forward pass.

``θ' = θ + H(E(x), G(θ))`` (mode ``fewsound``): ``E`` encodes a peak-normalised window of
audio, ``G`` encodes the universal weights ``θ`` (learned with everything else), and the MLP
``H`` maps the concatenation to a flat weight update that reshapes straight into the
batched parameter dict of :mod:`kancodec.inr`. Mode ``hypersound`` predicts the weights
directly, ``θ' = H(E(x))``, for comparison.

Two encoders ``E``: ``conv`` (SoundStream-style: residual units with dilations 1, 3, 9 and
ELU, strided downsampling) and ``spectral`` (log-mel frames through strided 1-D convs).
Both end in a small channel count kept per time frame and flattened, so the embedding
still knows *when* things happen in the window, which the INR weights must encode.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from . import inr
from .errors import FormatError, KanError, OptionError
from .loss import mel_filterbank
from .modelfile import ModelRef, open_model, save_model

MODES = ("fewsound", "hypersound")
ENCODERS = ("conv", "spectral")
#: INR families a hypernetwork can predict (those whose config says ``hyper_target``)
TARGETS = tuple(a for a, cls in inr.INR_CONFIGS.items() if cls.hyper_target)
KIND = "hyper"


@dataclass(frozen=True)
class HyperConfig:
    """The hypernetwork's sizes; saved in every model file (``kancodec.config``)."""

    target: dict = field(default_factory=lambda: inr.KANConfig().to_dict())
    mode: str = "fewsound"
    encoder: str = "conv"
    window: int = 32768
    sample_rate: int = 22050
    channels: tuple[int, ...] = (8, 16, 32, 64)  # conv stages (spectral: conv widths)
    strides: tuple[int, ...] = (4, 4, 8, 8)
    frame_channels: int = 16  # kept per time frame before flattening
    latent: int = 256  # size of E(x) and G(θ)
    theta_hidden: int = 64  # G: flat θ -> theta_hidden -> latent
    hidden: int = 256  # H's hidden width

    def __post_init__(self) -> None:
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        object.__setattr__(self, "strides", tuple(int(s) for s in self.strides))
        if self.mode not in MODES:
            raise OptionError(f"{{mode}} {self.mode!r}: choose one of: {', '.join(MODES)}", "mode")
        if self.encoder not in ENCODERS:
            raise OptionError(f"{{encoder}} {self.encoder!r}: choose one of: {', '.join(ENCODERS)}", "encoder")
        if self.target.get("arch") not in TARGETS:
            raise OptionError(f"{{target}} {self.target.get('arch')!r}: choose one of: {', '.join(TARGETS)}", "target")
        if len(self.channels) != len(self.strides) or self.window % math.prod(self.strides):
            raise KanError(f"hypernetwork strides {list(self.strides)} must match channels {list(self.channels)} "
                           f"and divide the window ({self.window})")

    @property
    def inr(self) -> inr.INR:
        return inr.config_from_dict(self.target)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["channels"], d["strides"] = list(self.channels), list(self.strides)
        return d


class _Residual(nn.Module):
    def __init__(self, ch: int, dilation: int):
        super().__init__()
        self.conv = nn.Conv1d(ch, ch, 7, dilation=dilation, padding=3 * dilation)
        self.proj = nn.Conv1d(ch, ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.proj(nn.functional.elu(self.conv(nn.functional.elu(x))))


class ConvEncoder(nn.Module):
    """``(B, window)`` -> ``(B, latent)``: SoundStream-style encoder of the raw waveform."""

    def __init__(self, c: HyperConfig):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv1d(1, c.channels[0], 7, padding=3)]
        widths = [*c.channels, c.channels[-1]]
        for i, s in enumerate(c.strides):
            layers += [_Residual(widths[i], d) for d in (1, 3, 9)]
            layers += [nn.ELU(), nn.Conv1d(widths[i], widths[i + 1], 2 * s, stride=s, padding=s // 2)]
        layers += [nn.ELU(), nn.Conv1d(widths[-1], c.frame_channels, 3, padding=1)]
        self.net = nn.Sequential(*layers)
        self.frames = c.window // math.prod(c.strides)
        self.out = nn.Linear(c.frame_channels * self.frames, c.latent)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.net(x.unsqueeze(1)).flatten(1))


class SpectralEncoder(nn.Module):
    """``(B, window)`` -> ``(B, latent)``: log-mel frames (n_fft 1024, hop 256, 80 bands),
    strided 1-D convolutions over time."""

    N_FFT, HOP, MELS = 1024, 256, 80

    def __init__(self, c: HyperConfig):
        super().__init__()
        self.register_buffer("fb", mel_filterbank(self.N_FFT, c.sample_rate, self.MELS), persistent=False)
        self.register_buffer("win", torch.hann_window(self.N_FFT), persistent=False)
        layers: list[nn.Module] = []
        width = self.MELS
        for ch in c.channels:
            layers += [nn.Conv1d(width, ch, 4, stride=2, padding=1), nn.ELU()]
            width = ch
        layers += [nn.Conv1d(width, c.frame_channels, 3, padding=1)]
        self.net = nn.Sequential(*layers)
        self.frames = self.net(torch.zeros(1, self.MELS, c.window // self.HOP + 1)).shape[-1]
        self.out = nn.Linear(c.frame_channels * self.frames, c.latent)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spec = torch.stft(x.float(), self.N_FFT, self.HOP, window=self.win, return_complex=True).abs()
        mel = torch.log(torch.matmul(spec.transpose(1, 2), self.fb) + 1e-5).transpose(1, 2)
        return self.out(self.net(mel.to(x.dtype)).flatten(1))


class HyperNetwork(nn.Module):
    """Predicts a batch of INR parameter dicts from a batch of windows."""

    def __init__(self, config: HyperConfig, seed: int = 0):
        super().__init__()
        self.config = config
        target = config.inr
        self.shapes = target.shapes()
        self.sizes = [math.prod(s) for s in self.shapes.values()]
        n = sum(self.sizes)
        gen = torch.Generator().manual_seed(seed)
        # torch's layers draw their initial weights from the global generator: seed it inside
        # a fork so the same seed gives the same network without touching the caller's RNG.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.encoder = ConvEncoder(config) if config.encoder == "conv" else SpectralEncoder(config)
            init = self.flatten(target.init(1, gen))[0]
            width = config.latent
            if config.mode == "fewsound":
                self.theta = nn.Parameter(init)
                self.g = nn.Sequential(nn.Linear(n, config.theta_hidden), nn.ELU(),
                                       nn.Linear(config.theta_hidden, config.latent))
                width *= 2
            self.h = nn.Sequential(nn.Linear(width, config.hidden), nn.ELU(), nn.Linear(config.hidden, config.hidden),
                                   nn.ELU(), nn.Linear(config.hidden, n))
        last = self.h[-1]
        with torch.no_grad():
            # Start at (or near) the INR's usual initialisation: a small update of θ, or for
            # HyperSound a bias holding a random network.
            last.weight.mul_(0.01)
            last.bias.copy_(torch.zeros(n) if config.mode == "fewsound" else init)

    def flatten(self, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """``{name: (B, *shape)}`` -> ``(B, P)``."""
        return torch.cat([params[k].flatten(1) for k in self.shapes], 1)

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """``(B, P)`` -> ``{name: (B, *shape)}``."""
        parts = torch.split(flat, self.sizes, dim=1)
        return {k: p.reshape(flat.shape[0], *s) for (k, s), p in zip(self.shapes.items(), parts)}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``(B, window)`` peak-normalised audio -> INR parameters ``{name: (B, *shape)}`` (float32)."""
        z = self.encoder(x)
        if self.config.mode == "fewsound":
            g = self.g(self.theta.unsqueeze(0)).expand(x.shape[0], -1)
            flat = self.theta.float() + self.h(torch.cat([z, g.to(z.dtype)], 1)).float()
        else:
            flat = self.h(z).float()
        return self.unflatten(flat)


def save(model: HyperNetwork, path, train: dict | None = None, half: bool = True, force: bool = False) -> int:
    """Write ``model`` as a model file (float16 by default: half the size, same predictions
    to well under the 8-bit quantisation step of a ``.kan`` file)."""
    state = {k: (v.half() if half and v.is_floating_point() else v) for k, v in model.state_dict().items()}
    return save_model(path, KIND, model.config.to_dict(), state, train, force)


def load(name="fewsound-kan", device: torch.device | str = "cpu") -> tuple[HyperNetwork, ModelRef]:
    """Find (see :func:`modelfile.find_model`), check and load a hypernetwork -> ``(model, ref)``."""
    ref, tensors = open_model(name, KIND)
    try:
        model = HyperNetwork(HyperConfig(**ref.config))
        model.load_state_dict({k: v.float() for k, v in tensors.items()})
    except (TypeError, KanError, RuntimeError) as e:
        raise FormatError(f"{ref.path}: model does not match its config ({str(e).splitlines()[0][:100]}); "
                          "retrain or restore it") from None
    return model.to(device).eval(), ref
