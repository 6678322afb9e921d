"""ADDA: adversarial discriminative domain adaptation (Tzeng et al., CVPR 2017).

1. Pre-train a source encoder M_s and classifier C on labelled source data.
2. Initialise the target encoder M_t = M_s; freeze M_s and C. A discriminator D learns to tell M_s(x_s) from M_t(x_t)
   while M_t learns to fool it, with the GAN's inverted labels:

       L_D = BCE(D(M_s(x_s)), 1) + BCE(D(M_t(x_t)), 0),     L_M = BCE(D(M_t(x_t)), 1)

   Both take one step on each batch: L_D does not reach M_t (its features are detached) and L_M does not update D
   (it runs through a detached copy of D's weights).
3. Classify target text with C(M_t(x)). The adaptation phase runs for a fixed schedule, as in the paper.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Iterable

import torch
import torch.nn.functional as F
from torch.func import functional_call

from ..losses import DomainDiscriminator
from .base import Context, Phase, Strategy, check, set_trainable


class ADDA(Strategy):
    name = "adda"
    adapts = True

    @dataclass
    class Params:
        adapt_epochs: int = 2
        adapt_lr: float = 1.0e-5  # for M_t and D, as in the BERT experiments of Ryu & Lee (2020)
        hidden: int = 256  # discriminator width

        def __post_init__(self):
            check(self.adapt_epochs >= 1, f"strategy.adapt_epochs={self.adapt_epochs} must be >= 1")
            check(self.adapt_lr > 0, f"strategy.adapt_lr={self.adapt_lr} must be > 0")
            check(self.hidden >= 1, f"strategy.hidden={self.hidden} must be >= 1")

    def __init__(self, params, model):
        super().__init__(params, model)
        self.discriminator = DomainDiscriminator(model.feature_dim, params.hidden)
        self.source_model = None  # M_s and C, frozen, from the end of phase 1

    def phases(self, data, ctx: Context) -> Iterable[Phase]:
        yield Phase("source", data.source_train, ctx.epochs)
        self.source_model = copy.deepcopy(self.model)
        self.freeze(self.source_model)
        yield Phase("adapt", data.source_train, self.params.adapt_epochs, unlabelled=data.target_pool,
                    selection="last", lr=self.params.adapt_lr)

    def start_phase(self, phase: Phase) -> None:
        super().start_phase(phase)
        if phase.name == "adapt":
            set_trainable(self.model.head, False)  # C stays the source classifier

    def forward(self, labelled, unlabelled, progress):
        if self.phase != "adapt":
            loss, _ = self.task_loss(labelled)
            return loss, {}
        with torch.no_grad():
            source = self.source_model.features(**labelled)
        target = self.model.features(**unlabelled)
        real, fake = torch.ones(len(source), device=source.device), torch.zeros(len(target), device=target.device)
        d_source = self.discriminator(source).squeeze(-1).float()
        d_target = self.discriminator(target.detach()).squeeze(-1).float()
        d_loss = F.binary_cross_entropy_with_logits(d_source, real) + F.binary_cross_entropy_with_logits(d_target, fake)
        frozen_d = {k: v.detach() for k, v in self.discriminator.named_parameters()}
        fooled = functional_call(self.discriminator, frozen_d, (target,)).squeeze(-1).float()
        m_loss = F.binary_cross_entropy_with_logits(fooled, torch.ones_like(fooled))
        d_acc = torch.cat([d_source > 0, d_target <= 0]).float().mean()
        return d_loss + m_loss, {"d_loss": d_loss.item(), "m_loss": m_loss.item(), "domain_acc": d_acc.item()}
