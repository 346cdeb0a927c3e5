"""Vector quantisation with EMA codebooks, data initialisation and dead-code restarts.

:class:`ResidualVQ` quantises ``z`` with a first codebook, the remainder with a second, and
so on; decoding sums the chosen entries. A single level is plain VQ (``kvq``).

Codebooks are not trained by gradient: each entry moves to the exponential moving average
(decay ``ema_decay``) of the vectors assigned to it. They start as randomly chosen latents
of the first training batch (random Gaussian entries sit far from where the encoder's
outputs are, so most of them would never be chosen), and an entry whose average use falls
below ``DEAD_SHARE`` of the uniform share is restarted on a random latent of the current
batch. The encoder is pulled towards its codes by the commitment loss and gets gradients
through the quantiser by the straight-through estimator.

Under DistributedDataParallel the EMA statistics are summed over processes and
initialisation and restarts are taken from rank 0, so every process keeps the same codebooks.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

DEAD_SHARE = 0.03
USAGE_DECAY = 0.9  # the dead-entry test looks at the last ~10 batches


def _sync(t: torch.Tensor, op: str) -> None:
    if dist.is_available() and dist.is_initialized():
        if op == "sum":
            dist.all_reduce(t)
        else:
            dist.broadcast(t, 0)


class Codebook(nn.Module):
    """One EMA codebook of ``size`` entries of ``dim`` numbers."""

    def __init__(self, size: int, dim: int, decay: float):
        super().__init__()
        self.decay = decay
        self.register_buffer("embed", torch.zeros(size, dim))  # replaced by latents on the first training batch
        self.register_buffer("ema_count", torch.ones(size))
        self.register_buffer("ema_sum", self.embed.clone())
        self.register_buffer("usage", torch.ones(size))
        self.register_buffer("ready", torch.zeros((), dtype=torch.int64))

    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """``(N, dim)`` -> ``(N,)`` index of the nearest entry (squared Euclidean)."""
        d = z.square().sum(1, keepdim=True) - 2 * z @ self.embed.T + self.embed.square().sum(1)
        return d.argmin(1)

    @torch.no_grad()
    def _pick(self, z: torch.Tensor, n: int, weight: torch.Tensor | None = None) -> torch.Tensor:
        """``n`` latents of the batch (with a little noise), chosen with probability ``weight``."""
        if weight is None or not float(weight.sum()) > 0:
            rows = torch.randint(0, z.shape[0], (n,), device=z.device)
        else:
            rows = torch.multinomial(weight, n, replacement=True)
        picked = z[rows] + 1e-3 * torch.randn(n, z.shape[1], device=z.device)
        _sync(picked, "broadcast")
        return picked

    @torch.no_grad()
    def update(self, z: torch.Tensor, idx: torch.Tensor) -> int:
        """EMA step from ``(N, dim)`` latents and their codes; returns the number of restarts.

        Restarted entries are drawn from the latents with probability proportional to their
        squared quantisation error (as k-means++ seeds), so they go where the codebook is worst."""
        size = self.embed.shape[0]
        counts = torch.bincount(idx, minlength=size).to(z.dtype)
        sums = torch.zeros_like(self.embed).index_add_(0, idx, z)
        _sync(counts, "sum")
        _sync(sums, "sum")
        self.ema_count.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.ema_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        total = self.ema_count.sum()
        smoothed = (self.ema_count + 1e-5) / (total + size * 1e-5) * total
        self.embed.copy_(self.ema_sum / smoothed.unsqueeze(1))
        self.usage.mul_(USAGE_DECAY).add_(counts, alpha=1 - USAGE_DECAY)
        dead = self.usage < DEAD_SHARE * counts.sum() / size
        _sync(dead, "broadcast")
        n_dead = int(dead.sum())
        if n_dead:
            err = (z - self.embed[idx]).square().sum(1)
            fresh = self._pick(z, n_dead, err)
            share = counts.sum() / size
            self.embed[dead] = fresh
            self.ema_sum[dead] = fresh * share
            self.ema_count[dead] = share
            self.usage[dead] = share
        return n_dead

    @torch.no_grad()
    def initialise(self, z: torch.Tensor) -> None:
        fresh = self._pick(z, self.embed.shape[0])
        self.embed.copy_(fresh)
        self.ema_count.fill_(z.shape[0] / self.embed.shape[0])
        self.ema_sum.copy_(fresh * self.ema_count.unsqueeze(1))
        self.usage.copy_(self.ema_count)
        self.ready.fill_(1)


class ResidualVQ(nn.Module):
    """``levels`` codebooks applied to successive residuals."""

    def __init__(self, levels: int, size: int, dim: int, decay: float):
        super().__init__()
        self.levels = nn.ModuleList(Codebook(size, dim, decay) for _ in range(levels))

    def forward(self, z: torch.Tensor, codebooks: int | None = None) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """``(…, dim)`` -> ``(quantised with a straight-through gradient, commitment loss, stats)``.

        In training mode the codebooks are initialised (first call) and EMA-updated.
        ``stats``: ``perplexity`` of the first level's codes (how many entries are in real
        use) and ``restarts`` (dead entries restarted in this call, all levels).
        """
        n = codebooks or len(self.levels)
        flat = z.reshape(-1, z.shape[-1])
        residual, total = flat.detach(), torch.zeros_like(flat)
        commit, restarts, stats = flat.new_zeros(()), 0, {}
        for i, book in enumerate(self.levels[:n]):
            if self.training and not book.ready:
                book.initialise(residual)
            idx = book.nearest(residual)
            q = book.embed[idx]  # the entries chosen, before the EMA step moves them
            if self.training:
                restarts += book.update(residual, idx)
            if i == 0:
                p = torch.bincount(idx, minlength=book.embed.shape[0]).float() / idx.numel()
                stats["perplexity"] = float(torch.exp(-(p * (p + 1e-12).log()).sum()))
            # commitment: the encoder's output (with the earlier levels' choices fixed) towards this code
            commit = commit + (flat - total.detach() - q).square().mean()
            total = total + q
            residual = residual - q
        stats["restarts"] = restarts
        out = flat + (total - flat).detach()
        return out.reshape(z.shape), commit, stats

    @torch.no_grad()
    def encode(self, z: torch.Tensor, n: int) -> torch.Tensor:
        """``(B, T, dim)`` -> ``(B, n, T)`` codes of the first ``n`` levels."""
        residual, codes = z.reshape(-1, z.shape[-1]), []
        for book in self.levels[:n]:
            idx = book.nearest(residual)
            residual = residual - book.embed[idx]
            codes.append(idx.reshape(z.shape[:-1]))
        return torch.stack(codes, 1)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """``(B, n, T)`` -> ``(B, T, dim)``: the sum of the chosen entries."""
        return sum(self.levels[i].embed[codes[:, i]] for i in range(codes.shape[1]))
