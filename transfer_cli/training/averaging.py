"""Weight averaging: the running mean of the weights after every optimiser step, from a point of the phase on (SWA:
Izmailov et al., "Averaging Weights Leads to Wider Optima and Better Generalization", UAI 2018; dense, every step,
as in SWAD: Cha et al., "Domain Generalization by Seeking Flat Minima", NeurIPS 2021). The phase evaluates, selects
and keeps the mean; training goes on from the live weights.

BatchNorm statistics are not averaged: they stay the live ones. SWA recomputes them with a pass over the training
data; here they trail the last steps, whose weights move least under the decaying learning rate.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Dict, Iterator

import torch
from torch import nn


class WeightAverage:
    """The mean of the trainable parameters of `module` over the optimiser steps taken after progress `start`."""

    def __init__(self, module: nn.Module, start: float):
        self.start = start
        self.params = {name: p for name, p in module.named_parameters() if p.requires_grad}
        self.mean = {name: p.detach().clone() for name, p in self.params.items()}

    @torch.no_grad()
    def add(self, count: int) -> None:
        """Fold the current weights into the mean, as its `count`-th member."""
        for name, p in self.params.items():
            self.mean[name].lerp_(p.detach(), 1.0 / count)

    @torch.no_grad()
    def _copy_in(self, values: Dict[str, torch.Tensor]) -> None:
        for name, p in self.params.items():
            p.copy_(values[name])

    @contextmanager
    def applied(self, active: bool) -> Iterator[None]:
        """The mean in place of the live weights for the block (nothing changes unless `active`)."""
        if not active:
            yield
            return
        live = {name: p.detach().clone() for name, p in self.params.items()}
        self._copy_in(self.mean)
        try:
            yield
        finally:
            self._copy_in(live)

    def apply(self) -> None:
        """The mean replaces the live weights for good (the phase's end)."""
        self._copy_in(self.mean)

    def state_dict(self) -> Dict[str, torch.Tensor]:
        return self.mean

    def load_state_dict(self, state: Dict[str, torch.Tensor]) -> None:
        for name, value in state.items():
            self.mean[name].copy_(value)
