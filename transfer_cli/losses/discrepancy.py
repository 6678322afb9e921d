"""Statistical distances between the feature distributions of two batches (source and target)."""

from __future__ import annotations

import torch
from torch import nn


def full_precision(x: torch.Tensor):
    """Small differences of second moments vanish in bf16: compute these statistics in fp32, even under autocast."""
    return torch.autocast(x.device.type, enabled=False)


class MultiKernelMMD(nn.Module):
    """Multi-kernel maximum mean discrepancy (DAN: Long et al., "Learning Transferable Features with Deep Adaptation
    Networks", ICML 2015).

        MMD²(S, T) = E[k(s, s')] + E[k(t, t')] - 2 E[k(s, t)],   k = Σ_i exp(-||x - y||² / σ_i²)

    with σ_i² = b · m^(i - n/2), i = 0..n-1 (n kernels, multiplier m) around the mean pairwise squared distance b of
    the batch (detached). The biased quadratic-time estimate: exactly 0 for identical batches."""

    def __init__(self, kernels: int = 5, multiplier: float = 2.0):
        super().__init__()
        self.kernels, self.multiplier = kernels, multiplier

    def forward(self, source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        with full_precision(source):
            return self._mmd(source.float(), target.float())

    def _mmd(self, source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        x = torch.cat([source, target])
        distances = torch.cdist(x, x).pow(2)
        n = len(x)
        base = distances.detach().sum() / max(n * n - n, 1)
        widths = [base * self.multiplier ** (i - self.kernels // 2) for i in range(self.kernels)]
        k = sum(torch.exp(-distances / w.clamp(min=1e-12)) for w in widths)
        ns = len(source)
        return k[:ns, :ns].mean() + k[ns:, ns:].mean() - 2 * k[:ns, ns:].mean()


def covariance(x: torch.Tensor) -> torch.Tensor:
    centred = x - x.mean(0, keepdim=True)
    return centred.T @ centred / max(len(x) - 1, 1)


class CoralLoss(nn.Module):
    """Deep CORAL (Sun & Saenko, "Deep CORAL: Correlation Alignment for Deep Domain Adaptation", ECCV-W 2016):
    match the second-order statistics of the two domains.

        L = ||C_s - C_t||_F² / (4 d²),   C = the feature covariance of a batch, d = the feature dimension."""

    def forward(self, source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        d = source.size(1)
        with full_precision(source):
            return (covariance(source.float()) - covariance(target.float())).pow(2).sum() / (4 * d * d)
