"""What every INR config shares: the :class:`INR` mixin of the frozen config dataclasses.

Its own module so that the families (:mod:`kancodec.inr` holds the paper's KAN and the
registry, :mod:`kancodec.mlp` the baselines) can all build on it without importing each other.
"""

from __future__ import annotations

import dataclasses
import math

import torch


class INR:
    """What every INR config shares (a mixin for frozen dataclasses)."""

    arch: str
    #: peak learning rate, chosen per family from measurement: the family's own in every preset
    #: unless :attr:`preset_lr` (then the preset's)
    lr: float = 5e-2
    #: follow the fit preset's learning rate (the KAN) instead of :attr:`lr` (the baselines)
    preset_lr: bool = False
    #: a FewSound hypernetwork can predict it (see :data:`kancodec.hyper.TARGETS`)
    hyper_target: bool = False

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Parameter shapes without the batch axis."""
        raise NotImplementedError

    @property
    def n_params(self) -> int:
        return sum(math.prod(s) for s in self.shapes().values())

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    def compact(self, params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The parameters worth storing; :meth:`expand` inverts it."""
        return dict(params)

    def expand(self, stored: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return dict(stored)

    def stored_shapes(self) -> dict[str, tuple[int, ...]]:
        return self.shapes()

    @property
    def keep_float(self) -> frozenset[str]:
        """Stored parameters kept in float32 whatever the bit depth (none for the KAN)."""
        return frozenset()

    def describe(self) -> str:
        """One line for ``info``: the family and its sizes."""
        d = self.to_dict()
        d.pop("arch")
        return f"{self.arch} " + " ".join(f"{k}={v}" for k, v in d.items())
