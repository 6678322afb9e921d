"""CDAN+E: conditional domain-adversarial training with entropy conditioning
(Long et al., "Conditional Adversarial Domain Adaptation", NeurIPS 2018).

The discriminator sees the features z *and* the class prediction g = softmax(C(z)), through the multilinear map
z ⊗ g, so it aligns the class-conditional distributions, not only the marginals. Confident examples weigh more:

    L = CE(C(z_s), y_s) + w * Σ_i ω_i BCE(D(GRL_λ(z_i ⊗ g_i)), d_i) / Σ_i ω_i,   ω = 1 + exp(-H(g))

with d = 0 for source, 1 for target, and DANN's λ schedule. As in the reference code, g is detached in the map.
The recipe around it is DANN's, from TLlib's CDAN: the bottleneck z, D with hidden 1024 and BatchNorm, B and C at
10x the backbone's learning rate; the same deviations (AdamW, warmup-then-linear decay, λ over the phase's progress,
D's own faster Adam).
"""

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from ..losses import DomainDiscriminator, MultilinearMap, dann_lambda, entropy_weights
from .dann import DANN


class CDAN(DANN):
    name = "cdan"

    @dataclass
    class Params(DANN.Params):  # w, γ, the discriminator's width, the bottleneck and the lr ratio, as DANN
        entropy: bool = True  # ω = 1 + exp(-H) (CDAN+E); false: plain CDAN, ω = 1
        sharpness_rho: Optional[float] = None  # SDAT, as DANN's; off: screened for DANN only

    def make_discriminator(self, width: int):
        self.map = MultilinearMap(width, self.model.num_labels)
        return DomainDiscriminator(self.map.out_features, self.params.hidden)

    def loss(self, labelled, unlabelled, progress):
        z, logits, domain = self.encode(labelled, unlabelled)
        task = F.cross_entropy(logits[domain == 0], labelled["labels"])
        g = F.softmax(logits, -1).detach()
        lam = dann_lambda(progress, self.params.gamma)
        domain_logits = self.discriminator(self.grl(self.map(z.float(), g), lam)).squeeze(-1).float()
        omega = entropy_weights(g) if self.params.entropy else torch.ones_like(domain)
        domain_loss = (omega * F.binary_cross_entropy_with_logits(domain_logits, domain, reduction="none")).sum() / omega.sum()
        domain_acc = ((domain_logits > 0).float() == domain).float().mean()
        return task + self.params.weight * domain_loss, {
            "task_loss": task.item(), "domain_loss": domain_loss.item(), "domain_acc": domain_acc.item(), "lambda": lam,
        }
