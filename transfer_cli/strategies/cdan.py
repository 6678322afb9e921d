"""CDAN+E: conditional domain-adversarial training with entropy conditioning
(Long et al., "Conditional Adversarial Domain Adaptation", NeurIPS 2018).

The discriminator sees the features f *and* the class prediction g = softmax(head(f)), through the multilinear map
f ⊗ g, so it aligns the class-conditional distributions, not only the marginals. Confident examples weigh more:

    L = CE(head(f_s), y_s) + w * Σ_i ω_i BCE(D(GRL_λ(f_i ⊗ g_i)), d_i) / Σ_i ω_i,   ω = 1 + exp(-H(g))

with d = 0 for source, 1 for target, and DANN's λ schedule. As in the reference code, g is detached in the map.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..losses import DomainDiscriminator, GradientReversal, MultilinearMap, dann_lambda, entropy_weights
from .base import Strategy
from .dann import DANN


class CDAN(Strategy):
    name = "cdan"
    adapts = True

    @dataclass
    class Params(DANN.Params):  # w, γ and the discriminator width, as DANN
        entropy: bool = True  # ω = 1 + exp(-H) (CDAN+E); false: plain CDAN, ω = 1

    def __init__(self, params, model):
        super().__init__(params, model)
        self.grl = GradientReversal()
        self.map = MultilinearMap(model.feature_dim, model.num_labels)
        self.discriminator = DomainDiscriminator(self.map.out_features, params.hidden)

    def forward(self, labelled, unlabelled, progress):
        task, source_features = self.task_loss(labelled)
        features = torch.cat([source_features, self.model.features(**unlabelled)])
        g = F.softmax(self.model.head(features).float(), -1).detach()
        domain = torch.cat([torch.zeros(len(source_features)), torch.ones(len(features) - len(source_features))])
        domain = domain.to(features.device)
        lam = dann_lambda(progress, self.params.gamma)
        logits = self.discriminator(self.grl(self.map(features.float(), g), lam)).squeeze(-1).float()
        omega = entropy_weights(g) if self.params.entropy else torch.ones_like(domain)
        domain_loss = (omega * F.binary_cross_entropy_with_logits(logits, domain, reduction="none")).sum() / omega.sum()
        domain_acc = ((logits > 0).float() == domain).float().mean()
        return task + self.params.weight * domain_loss, {
            "task_loss": task.item(), "domain_loss": domain_loss.item(), "domain_acc": domain_acc.item(), "lambda": lam,
        }
