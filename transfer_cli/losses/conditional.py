"""Conditioning the domain discriminator on the classifier's predictions (CDAN: Long et al., "Conditional
Adversarial Domain Adaptation", NeurIPS 2018)."""

from __future__ import annotations

import torch
from torch import nn


def entropy(probabilities: torch.Tensor) -> torch.Tensor:
    """H(p) = -Σ_c p_c log p_c, per example."""
    return -(probabilities * probabilities.clamp(min=1e-12).log()).sum(-1)


def entropy_weights(probabilities: torch.Tensor) -> torch.Tensor:
    """w = 1 + exp(-H(p)), normalised to mean 1: confident (low-entropy) examples count more in the domain loss."""
    w = 1.0 + torch.exp(-entropy(probabilities))
    return w / w.mean()


class MultilinearMap(nn.Module):
    """T(f, g) = f ⊗ g (flattened outer product of features f ∈ R^d and class probabilities g ∈ R^C).

    Above `max_dim` = d·C it is the randomised map T = (R_f f) ⊙ (R_g g) / sqrt(max_dim), with fixed Gaussian R."""

    def __init__(self, features: int, classes: int, max_dim: int = 4096):
        super().__init__()
        self.randomised = features * classes > max_dim
        self.out_features = max_dim if self.randomised else features * classes
        if self.randomised:
            self.register_buffer("r_f", torch.randn(features, max_dim))
            self.register_buffer("r_g", torch.randn(classes, max_dim))

    def forward(self, f: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        if self.randomised:
            return (f @ self.r_f) * (g @ self.r_g) / self.out_features ** 0.5
        return torch.bmm(g.unsqueeze(2), f.unsqueeze(1)).flatten(1)
