"""ADDA: adversarial discriminative domain adaptation (Tzeng et al., CVPR 2017), with the recipe of the reference
code for BERT (the AAD authors', Ryu & Lee 2020) and pytorch-adapt's update gate.

1. Pre-train a source encoder M_s and classifier C on labelled source data.
2. Initialise the target encoder M_t = M_s; freeze M_s and C. A discriminator D learns to tell M_s's features of
   source text ("real") from M_t's of target text ("fake") while M_t learns to fool it (the GAN's inverted labels):

       L_D = BCE(D(h(M_s(x_s))), 1) + BCE(D(h(M_t(x_t))), 0)      (the mean over both)
       L_M = BCE(D(h(M_t(x_t))), 1)

   h = tanh bounds what D reads, as the reference's BERT pooler output is bounded. D and M_t are separate
   parameter groups, as in the reference: Adam (no weight decay) at a constant adapt_lr, batches of 64; M_t's
   gradients clipped to norm 1, D's not; D's weights clamped to ±clamp after each update (0: none). M_t updates
   only on the steps where D tells the domains apart more than `gate` of the time (pytorch-adapt's 0.6), so it
   never chases a random D.
3. Classify target text with C(M_t(x)); the adaptation phase keeps its last epoch, as the paper.

Deviations: D and M_t update together from one forward and one backward pass (L_D does not reach M_t: its features
are detached; L_M does not reach D: it runs through a detached copy of D's weights), where the reference steps D
first. D is the AAD code's MLP (two LeakyReLU layers, 4x the feature width), not Tzeng's 500-500. M_s computes its
features with dropout, as M_t does: otherwise D could tell them apart by the dropout noise alone.
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass
from typing import Iterable, Optional

import torch
import torch.nn.functional as F
from torch.func import functional_call

from ..losses import DomainDiscriminator
from .base import Context, Group, Phase, Strategy, check


@contextlib.contextmanager
def dropout_on(module):
    """A frozen module in training mode (dropout on) for the duration: its outputs are as noisy as a trained one's."""
    module.train()
    try:
        yield module
    finally:
        module.eval()


class ADDA(Strategy):
    name = "adda"
    adapts = True

    @dataclass
    class Params:
        adapt_epochs: int = 2
        adapt_lr: float = 1.0e-5  # for M_t and D, as in the BERT code of Ryu & Lee (2020)
        adapt_batch_size: int = 64  # as that code: at 16, M_t takes 4x the steps per epoch and drifts further
        hidden: Optional[int] = None  # D's width (default: 4x the feature width, as the AAD code's 3072 for BERT)
        gate: float = 0.6  # M_t updates only when D's accuracy on the step is above this (0: always)
        clamp: float = 0.0  # D's weights clamped to ±clamp after each update (0: none)

        def __post_init__(self):
            check(self.adapt_epochs >= 1, f"strategy.adapt_epochs={self.adapt_epochs} must be >= 1")
            check(self.adapt_lr > 0, f"strategy.adapt_lr={self.adapt_lr} must be > 0")
            check(self.adapt_batch_size >= 1, f"strategy.adapt_batch_size={self.adapt_batch_size} must be >= 1")
            check(self.hidden is None or self.hidden >= 1, f"strategy.hidden={self.hidden} must be >= 1")
            check(0 <= self.gate < 1, f"strategy.gate={self.gate} must be in [0, 1)")
            check(self.clamp >= 0, f"strategy.clamp={self.clamp} must be >= 0")

    def __init__(self, params, model):
        super().__init__(params, model)
        self.discriminator = DomainDiscriminator(model.feature_dim, params.hidden or 4 * model.feature_dim,
                                                 batch_norm=False)
        self.source_model = None  # M_s and C, frozen, from the end of phase 1

    def phases(self, data, ctx: Context) -> Iterable[Phase]:
        yield Phase("source", data.source_train, ctx.epochs)
        self.source_model = copy.deepcopy(self.model)
        self.freeze(self.source_model)
        p = self.params
        gate = (lambda logs: logs["domain_acc"] > p.gate) if p.gate > 0 else None
        groups = [
            Group("discriminator", [self.discriminator], lr=p.adapt_lr, weight_decay=0.0, schedule="constant",
                  max_grad_norm=0.0, clamp=p.clamp or None),
            Group("target_encoder", [self.model.backbone], lr=p.adapt_lr, weight_decay=0.0, schedule="constant",
                  max_grad_norm=1.0, gate=gate),
        ]
        yield Phase("adapt", data.source_train, p.adapt_epochs, unlabelled=data.target_pool, selection="last",
                    loss=self.adapt_loss, groups=groups, batch_size=p.adapt_batch_size,
                    frozen=[self.model.head])  # C stays the source classifier

    def real_features(self, labelled: dict) -> torch.Tensor:
        """What D must call real: M_s's features of source text."""
        with torch.no_grad(), dropout_on(self.source_model):
            return self.source_model.features(**labelled)

    def adversarial(self, real: torch.Tensor, fake: torch.Tensor):
        """L_D (reaching D only) and L_M (reaching M_t only), and D's accuracy."""
        logits = self.discriminator(torch.tanh(torch.cat([real, fake]).detach())).squeeze(-1).float()
        truth = torch.cat([torch.ones(len(real)), torch.zeros(len(fake))]).to(logits.device)
        d_loss = F.binary_cross_entropy_with_logits(logits, truth)
        frozen_d = {k: v.detach() for k, v in self.discriminator.named_parameters()}
        fooled = functional_call(self.discriminator, frozen_d, (torch.tanh(fake),)).squeeze(-1).float()
        m_loss = F.binary_cross_entropy_with_logits(fooled, torch.ones_like(fooled))
        d_acc = ((logits > 0).float() == truth).float().mean()
        return d_loss, m_loss, d_acc.item()

    def adapt_loss(self, labelled, unlabelled, progress):
        d_loss, m_loss, d_acc = self.adversarial(self.real_features(labelled), self.model.features(**unlabelled))
        return d_loss + m_loss, {"d_loss": d_loss.item(), "m_loss": m_loss.item(), "domain_acc": d_acc}
