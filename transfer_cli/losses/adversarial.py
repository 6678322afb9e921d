"""Adversarial domain alignment: the gradient-reversal layer and a domain discriminator (Ganin et al. 2016)."""

from __future__ import annotations

import math

import torch
from torch import nn


class _ReverseGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, coeff: float) -> torch.Tensor:
        ctx.coeff = coeff
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return -ctx.coeff * grad, None


class GradientReversal(nn.Module):
    """Identity in the forward pass; multiplies the gradient by -λ in the backward pass.

    The features below it then *maximise* the loss of the discriminator above it: min_F max_D of the domain loss."""

    def forward(self, x: torch.Tensor, coeff: float = 1.0) -> torch.Tensor:
        return _ReverseGrad.apply(x, coeff)


def dann_lambda(progress: float, gamma: float = 10.0) -> float:
    """The DANN schedule λ_p = 2 / (1 + exp(-γ p)) - 1, rising from 0 to ~1 as training progress p goes 0 -> 1."""
    return 2.0 / (1.0 + math.exp(-gamma * progress)) - 1.0


class DomainDiscriminator(nn.Sequential):
    """A small MLP that predicts the domain (one logit: target vs source) of a feature vector."""

    def __init__(self, in_features: int, hidden: int = 256, dropout: float = 0.1):
        super().__init__(
            nn.Linear(in_features, hidden), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(hidden, hidden), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(hidden, 1),
        )
