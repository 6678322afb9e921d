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
    """A small MLP that predicts the domain (one logit) of a feature vector. With `batch_norm`, TLlib's
    (Linear-BatchNorm-ReLU twice, as in DANN and CDAN there); without, the AAD authors' (Linear-LeakyReLU twice)."""

    def __init__(self, in_features: int, hidden: int = 1024, batch_norm: bool = True):
        if batch_norm:
            block = lambda i: [nn.Linear(i, hidden), nn.BatchNorm1d(hidden), nn.ReLU()]  # noqa: E731
        else:
            block = lambda i: [nn.Linear(i, hidden), nn.LeakyReLU()]  # noqa: E731
        super().__init__(*block(in_features), *block(hidden), nn.Linear(hidden, 1))


class BottleneckHead(nn.Module):
    """A classifier head with a bottleneck, as TLlib's adversarial methods use: z = ReLU(BN(W dropout(f))),
    logits = V z. The domain discriminator reads z, so the alignment acts on a small learned space above the backbone."""

    def __init__(self, in_features: int, width: int, classes: int, dropout: float = 0.1):
        super().__init__()
        self.bottleneck = nn.Sequential(nn.Dropout(dropout), nn.Linear(in_features, width), nn.BatchNorm1d(width),
                                        nn.ReLU())
        self.classifier = nn.Linear(width, classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.bottleneck(features))
