"""KAN autoencoders: a window of audio -> a few numbers (or codebook indices) -> audio.

The signal is cut into ``frame``-sample frames every ``hop`` samples (the signal is padded
by ``frame - hop`` on both sides, so every sample is covered by the same number of frames).
The encoder maps each frame to ``latent`` numbers, the decoder maps them back to a frame,
which is multiplied by a periodic Hann window and overlap-added: with ``frame / hop`` an
integer >= 2 the windows sum to the constant ``frame / (2 hop)``, so the frames blend with
complementary weights. Four kinds (``AEConfig.kind``):

- ``kae``: encoder -> latent -> decoder, trained on reconstruction.
- ``kvae``: the encoder gives a mean and log-variance; a sample goes to the decoder in
  training (the mean in use), with ``kl_weight`` x KL(q(z|x) || N(0, I)) in the loss.
- ``kvq``: one codebook (:class:`~kancodec.vq.ResidualVQ` with one level).
- ``krvq``: ``codebooks`` residual levels with quantiser dropout, so one model serves
  ``1 … codebooks`` codebooks (``0.86 kbps`` per codebook at the defaults).

Layers are KAN layers of :mod:`kancodec.kan` (``layer="kan"``) or, as the baseline of the
KAN-AutoEncoder experiments, SiLU MLP layers (``layer="mlp"``) whose hidden widths are
scaled by ``grid + order + 2`` so both have (nearly) the same number of parameters.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .errors import FormatError, KanError, OptionError
from .kan import init_kan_layer, kan_features, kan_weight
from .modelfile import ModelRef, open_model, save_model
from .vq import ResidualVQ

KINDS = ("kae", "kvae", "kvq", "krvq")
LAYERS = ("kan", "mlp")
KIND = "ae"  # model-file kind
BLOCK = 2048  # frames per encoder/decoder call: bounds memory on long files
LATENT_RANGE = 3.0  # decoder's first KAN layer: grid on [-3, 3] (hidden layers follow a LayerNorm: [-2, 2])


@dataclass(frozen=True)
class AEConfig:
    """An autoencoder's sizes and loss weights; saved in every model file."""

    kind: str = "krvq"
    layer: str = "kan"
    sample_rate: int = 22050
    frame: int = 512
    hop: int = 256
    hidden: tuple[int, ...] = (128,)
    latent: int = 32
    grid: int = 8
    order: int = 3
    codebooks: int = 8  # krvq: residual levels (kvq: always 1)
    codebook_size: int = 1024
    latent_norm: bool = True  # LayerNorm on the latent before quantisation (vq kinds)
    ema_decay: float = 0.99
    commitment: float = 0.25
    quantizer_dropout: float = 0.5  # krvq: share of training batches using a random number of levels
    kl_weight: float = 1e-3  # kvae
    latent_bits: int = 8  # kae/kvae: bits per stored latent value unless encode says otherwise

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        if self.kind not in KINDS:
            raise OptionError(f"{{kind}} {self.kind!r}: choose one of: {', '.join(KINDS)}", "kind")
        if self.layer not in LAYERS:
            raise OptionError(f"{{layer}} {self.layer!r}: choose one of: {', '.join(LAYERS)}", "layer")
        if self.hop < 1 or self.frame % self.hop or self.frame // self.hop < 2:
            raise OptionError(f"{{frame}} {self.frame} / {{hop}} {self.hop}: the frame must be a multiple (2 or more) "
                              "of the hop", "frame", "hop")
        if self.latent < 1 or any(h < 1 for h in self.hidden) or self.codebooks < 1 or self.frame < 8:
            raise OptionError("{latent}, {hidden} and {codebooks} must be at least 1 and {frame} at least 8",
                              "latent", "hidden", "codebooks", "frame")
        if self.codebook_size < 2 or self.grid < 1 or not 1 <= self.order <= 5:
            raise OptionError(f"{{codebook_size}} {self.codebook_size} / {{grid}} {self.grid} / {{order}} {self.order}: "
                              "need a codebook of 2 or more entries, a grid of 1 or more intervals, order 1-5",
                              "codebook_size", "grid", "order")
        if not (0 <= self.kl_weight and 0 < self.ema_decay < 1 and 0 <= self.commitment and 0 <= self.quantizer_dropout <= 1):
            raise OptionError("{kl_weight} and {commitment} must be >= 0, {ema_decay} in (0, 1), {quantizer_dropout} "
                              "in [0, 1]", "kl_weight", "commitment", "ema_decay", "quantizer_dropout")
        if self.kind == "kvq" and self.codebooks != 1:
            object.__setattr__(self, "codebooks", 1)

    @property
    def quantized(self) -> bool:
        return self.kind in ("kvq", "krvq")

    @property
    def code_bits(self) -> int:
        return math.ceil(math.log2(self.codebook_size))

    def kbps(self, codebooks: int | None = None, bits: int | None = None) -> float:
        """Payload bitrate (codes, or latents at ``bits``; the file adds a small header)."""
        per_frame = ((codebooks or self.codebooks) * self.code_bits if self.quantized
                     else self.latent * (bits or self.latent_bits))
        return per_frame * self.sample_rate / self.hop / 1000

    def widths(self) -> tuple[int, ...]:
        """Hidden widths as built: MLP ones scaled to the KAN's parameter count."""
        scale = self.grid + self.order + 2 if self.layer == "mlp" else 1
        return tuple(h * scale for h in self.hidden)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["hidden"] = list(self.hidden)
        return d


class KANLayer(nn.Module):
    """One KAN layer, ``(..., I) -> (..., O)``, with its B-spline grid on ``[-bound, bound]``."""

    def __init__(self, n_in: int, n_out: int, grid: int, order: int, bound: float, gen: torch.Generator):
        super().__init__()
        p = init_kan_layer(1, n_in, n_out, grid, order, gen)
        self.base, self.spline, self.scale = (nn.Parameter(p[k][0]) for k in ("base", "spline", "scale"))
        self.grid, self.order, self.bound = grid, order, bound

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = kan_features(x, self.grid, self.order, -self.bound, self.bound)
        return feats @ kan_weight(self.base[None], self.spline[None], self.scale[None])[0]


def _stack(c: AEConfig, widths: list[int], first_bound: float, gen: torch.Generator) -> nn.Sequential:
    """Layers ``widths[0] -> … -> widths[-1]``; between them a LayerNorm (KAN: keeps the next
    layer's input on its grid) or LayerNorm + SiLU (MLP)."""
    mods: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        if i:
            mods.append(nn.LayerNorm(a, elementwise_affine=False))
            if c.layer == "mlp":
                mods.append(nn.SiLU())
        if c.layer == "kan":
            mods.append(KANLayer(a, b, c.grid, c.order, first_bound if i == 0 else 2.0, gen))
        else:
            mods.append(nn.Linear(a, b))
    return nn.Sequential(*mods)


class AutoEncoder(nn.Module):
    """Frame-wise autoencoder of peak-normalised mono audio at ``config.sample_rate``."""

    def __init__(self, config: AEConfig, seed: int = 0):
        super().__init__()
        self.config = c = config
        gen = torch.Generator().manual_seed(seed)
        hidden = list(c.widths())
        out = 2 * c.latent if c.kind == "kvae" else c.latent
        self.encoder = _stack(c, [c.frame, *hidden, out], 1.0, gen)
        self.decoder = _stack(c, [c.latent, *hidden[::-1], c.frame], LATENT_RANGE, gen)
        self.vq = ResidualVQ(c.codebooks, c.codebook_size, c.latent, c.ema_decay) if c.quantized else None
        self.register_buffer("window", torch.hann_window(c.frame, periodic=True), persistent=False)

    # -- framing -------------------------------------------------------------------------
    def n_frames(self, n: int) -> int:
        c = self.config
        return math.ceil((n + c.frame - c.hop) / c.hop)

    def frames(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, n)`` -> ``(B, T, frame)``."""
        c = self.config
        pad = c.frame - c.hop
        t = self.n_frames(x.shape[-1])
        x = F.pad(x, (pad, (t - 1) * c.hop + c.frame - pad - x.shape[-1]))
        return x.unfold(-1, c.frame, c.hop)

    def overlap_add(self, y: torch.Tensor, n: int) -> torch.Tensor:
        """``(B, T, frame)`` -> ``(B, n)``: windowed frames summed (the inverse of :meth:`frames`)."""
        c = self.config
        b, t, _ = y.shape
        length = (t - 1) * c.hop + c.frame
        out = F.fold((y * self.window).transpose(1, 2), (1, length), (1, c.frame), stride=(1, c.hop))
        pad = c.frame - c.hop
        return out.reshape(b, length)[:, pad:pad + n] * (2 * c.hop / c.frame)

    # -- the codec -----------------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, n)`` -> continuous latents ``(B, T, latent)`` (the mean for kvae; normalised
        for the vq kinds when ``latent_norm``)."""
        z = torch.cat([self.encoder(f) for f in self.frames(x).split(BLOCK, 1)], 1)
        if self.config.kind == "kvae":
            z = z[..., :self.config.latent]
        elif self.vq is not None and self.config.latent_norm:
            z = F.layer_norm(z, z.shape[-1:])
        return z

    def quantize(self, z: torch.Tensor, codebooks: int | None = None) -> torch.Tensor:
        """``(B, T, latent)`` -> codes ``(B, n, T)`` int64 with the first ``n`` codebooks."""
        return self.vq.encode(z, codebooks or self.config.codebooks)

    def dequantize(self, codes: torch.Tensor) -> torch.Tensor:
        """``(B, n, T)`` codes -> ``(B, T, latent)``."""
        return self.vq.decode(codes)

    def decode(self, z: torch.Tensor, n: int) -> torch.Tensor:
        """``(B, T, latent)`` -> ``(B, n)`` audio."""
        return self.overlap_add(torch.cat([self.decoder(b) for b in z.split(BLOCK, 1)], 1), n)

    def forward(self, x: torch.Tensor, codebooks: int | None = None) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """Training/validation pass: ``(B, n)`` -> ``(reconstruction (B, n), extra loss, stats)``.

        The extra loss is the commitment term (vq kinds) or the weighted KL (kvae), already
        summed over the batch like :func:`~kancodec.loss.fit_loss`.
        """
        c = self.config
        z = self.encoder(self.frames(x))
        extra, stats = z.new_zeros(()), {}
        if c.kind == "kvae":
            mu, logvar = z[..., :c.latent], z[..., c.latent:].clamp(-10, 10)
            kl = 0.5 * (mu.square() + logvar.exp() - 1 - logvar).sum(-1).mean(-1)  # (B,) per frame
            stats["kl"] = float(kl.detach().mean())
            z = mu + torch.randn_like(mu) * (0.5 * logvar).exp() if self.training else mu
            extra = c.kl_weight * kl.sum()
        elif self.vq is not None:
            if c.latent_norm:
                z = F.layer_norm(z, z.shape[-1:])
            zq, commit, stats = self.vq(z, codebooks)
            extra = c.commitment * commit * x.shape[0]
            z = zq
        return self.decode(z, x.shape[-1]), extra, stats


def save(model: AutoEncoder, path, train: dict | None = None, half: bool = True, force: bool = False) -> int:
    """Write ``model`` as a model file (weights float16; codebooks and EMA state float32)."""
    state = {k: (v.half() if half and v.is_floating_point() and not k.startswith("vq.") else v)
             for k, v in model.state_dict().items()}
    return save_model(path, KIND, model.config.to_dict(), state, train, force)


def load(name, device: torch.device | str = "cpu") -> tuple[AutoEncoder, ModelRef]:
    """Find (see :func:`modelfile.find_model`), check and load an autoencoder -> ``(model, ref)``."""
    ref, tensors = open_model(name, KIND)
    try:
        model = AutoEncoder(AEConfig(**ref.config))
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in tensors.items()})
    except (TypeError, KanError, RuntimeError) as e:
        raise FormatError(f"{ref.path}: model does not match its config ({str(e).splitlines()[0][:100]}); "
                          "retrain or restore it") from None
    return model.to(device).eval(), ref
