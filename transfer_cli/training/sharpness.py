"""Sharpness-aware steps (SAM: Foret et al., "Sharpness-Aware Minimization for Efficiently Improving
Generalization", ICLR 2021), for one term of a phase's loss (SDAT: Rangwani et al., "A Closer Look at Smoothness in
Domain Adversarial Training", ICML 2022, which makes only the task loss of adversarial adaptation sharpness-aware).

    ε = ρ · ∇L_term(w) / ‖∇L_term(w)‖,   the update follows ∇L(w + ε)   (L: the phase's whole loss)

ε is taken per process and per micro-batch (m-sharpness, as SAM's own experiments use).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Iterator, Optional

import torch
from torch import nn

from ..strategies import Sharpness


@contextmanager
def _batchnorm_statistics_held(modules) -> Iterator[None]:
    """BatchNorm layers normalise by the batch but leave their running statistics as they are (the first pass is a
    probe, not a step)."""
    norms = [m for module in modules for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    held = [(m.momentum, None if m.num_batches_tracked is None else m.num_batches_tracked.clone()) for m in norms]
    for m in norms:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, (momentum, count) in zip(norms, held):
            m.momentum = momentum
            if count is not None:
                m.num_batches_tracked.copy_(count)


@contextmanager
def ascended(sharpness: Optional[Sharpness], batch: dict, accelerator) -> Iterator[None]:
    """The block runs with the weights moved by ε along the term's gradient, and they are put back, exactly, when it
    ends. Without `sharpness`, or where the gradient is zero or not finite, the weights stay where they are."""
    if sharpness is None:
        yield
        return
    params = [p for module in sharpness.modules for p in module.parameters() if p.requires_grad]
    with accelerator.autocast(), _batchnorm_statistics_held(sharpness.modules):
        term = sharpness.loss(batch)
    grads = torch.autograd.grad(term, params, allow_unused=True)
    moved = [(p, g) for p, g in zip(params, grads) if g is not None]
    norm = math.sqrt(sum(float(g.float().pow(2).sum()) for _, g in moved))
    if not (math.isfinite(norm) and norm > 0):
        yield
        return
    live = [p.detach().clone() for p, _ in moved]
    with torch.no_grad():
        for p, g in moved:
            p.add_(g.to(p.dtype), alpha=sharpness.rho / norm)
    try:
        yield
    finally:
        with torch.no_grad():
            for (p, _), w in zip(moved, live):
                p.copy_(w)
