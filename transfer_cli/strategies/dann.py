"""DANN: domain-adversarial training (Ganin et al., "Domain-Adversarial Training of Neural Networks", JMLR 2016).

A discriminator D learns to tell source from target features; a gradient-reversal layer makes the encoder F fool it:

    L = CE(head(F(x_s)), y_s) + w * BCE(D(GRL_λ(F(x))), d),    d = 0 for source, 1 for target,
    λ_p = 2 / (1 + exp(-γ p)) - 1  (γ = 10), p = training progress in [0, 1].
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..losses import DomainDiscriminator, GradientReversal, dann_lambda
from .base import Strategy, check


class DANN(Strategy):
    name = "dann"
    adapts = True

    @dataclass
    class Params:
        weight: float = 1.0  # w, the domain loss weight
        gamma: float = 10.0  # γ of the λ schedule
        hidden: int = 256  # discriminator width

        def __post_init__(self):
            check(self.weight >= 0, f"strategy.weight={self.weight} must be >= 0")
            check(self.gamma > 0, f"strategy.gamma={self.gamma} must be > 0")
            check(self.hidden >= 1, f"strategy.hidden={self.hidden} must be >= 1")

    def __init__(self, params, model):
        super().__init__(params, model)
        self.grl = GradientReversal()
        self.discriminator = DomainDiscriminator(model.feature_dim, params.hidden)

    def forward(self, labelled, unlabelled, progress):
        task, source_features = self.task_loss(labelled)
        target_features = self.model.features(**unlabelled)
        features = torch.cat([source_features, target_features])
        domain = torch.cat([torch.zeros(len(source_features)), torch.ones(len(target_features))]).to(features.device)
        lam = dann_lambda(progress, self.params.gamma)
        logits = self.discriminator(self.grl(features, lam)).squeeze(-1).float()
        domain_loss = F.binary_cross_entropy_with_logits(logits, domain)
        domain_acc = ((logits > 0).float() == domain).float().mean()
        return task + self.params.weight * domain_loss, {
            "task_loss": task.item(), "domain_loss": domain_loss.item(), "domain_acc": domain_acc.item(), "lambda": lam,
        }
