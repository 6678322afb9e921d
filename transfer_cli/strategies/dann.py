"""DANN: domain-adversarial training (Ganin et al., "Domain-Adversarial Training of Neural Networks", JMLR 2016),
with the recipe of TLlib's DANN (Jiang et al., Transfer-Learning-Library) around it.

A discriminator D learns to tell source from target features; a gradient-reversal layer makes the encoder fool it:

    z = B(F(x)),   L = CE(C(z_s), y_s) + w · BCE(D(GRL_λ(z)), d),   d = 0 for source, 1 for target,
    λ_p = 2 / (1 + exp(-γ p)) - 1  (γ = 10), p = training progress in [0, 1].

As in TLlib: B is a bottleneck (Linear-BatchNorm-ReLU, 256 wide, after the model's dropout) between the backbone F
and the classifier C; D (hidden 1024, BatchNorm) reads z; B and C learn at 10x the backbone's rate (TLlib: backbone
at 0.1x the base rate); source and target go through one forward pass, so BatchNorm sees both domains.
Deviations: AdamW with the run's warmup-then-linear-decay schedule, not SGD with momentum and lr·(1 + 10⁻³ i)^-0.75
(AdamW is the usual optimiser for transformers); λ follows the phase's progress p, as in the paper, not a fixed 1000
iterations. D has its own Adam: a constant 1e-3 with β1 = 0.5 (GAN practice), faster than the encoder, as the
two-timescale rule asks (Heusel et al. 2017). Adam bounds every step by its learning rate however large the
gradient, so with D at B's rate (TLlib's SGD steps in proportion to D's error) the encoder flipped the domains faster
than D could follow: D's loss rose to 2-4 (ln 2 is chance) and its accuracy fell to 3-30% within 40 steps, on
kitchen→dvd and kitchen→movies, and the task loss climbed back to chance (docs/results.md).
`average_from` (off by default) scores and keeps the running mean of the weights past that share of the phase (SWA,
training/averaging.py), a variance reducer for the game; not in TLlib's recipe.
`sharpness_rho` (ρ = 0.05, SAM's default; null turns it off) makes the task loss sharpness-aware (SDAT, Rangwani et al., ICML 2022:
training/sharpness.py): each step first probes L_task on the source batch, moves the encoder, bottleneck and
classifier by ε = ρ·∇L_task/‖∇L_task‖ (not D), and updates with the whole loss's gradient there; SDAT reports that
flat minima of the task loss stabilise the adversarial game. SDAT's ρ is 0.02 to 0.05 with SGD on ResNet and ViT.
One step costs an extra forward and backward of the source batch. Screened on electronics→movies, a pair the
Amazon-12 table does not report, under a rule written first: the seed std fell from 0.031 to 0.006, the mean rose by
0.017 (docs/results.md).
"""

from dataclasses import dataclass
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..losses import BottleneckHead, DomainDiscriminator, GradientReversal, dann_lambda
from ..models import make_head
from .base import Group, Phase, Sharpness, Strategy, check


def joint_features(model, labelled: dict, unlabelled: dict) -> torch.Tensor:
    """The pooled features of a source and a target batch from one forward pass (each padded to the wider one)."""
    width = max(labelled["input_ids"].shape[1], unlabelled["input_ids"].shape[1])
    pad = lambda t: F.pad(t, (0, width - t.shape[1]))  # noqa: E731  (masked out: the pad id does not matter)
    ids = torch.cat([pad(labelled["input_ids"]), pad(unlabelled["input_ids"])])
    mask = torch.cat([pad(labelled["attention_mask"]), pad(unlabelled["attention_mask"])])
    return model.features(ids, mask)


class DANN(Strategy):
    name = "dann"
    adapts = True

    @dataclass
    class Params:
        weight: float = 1.0  # w, the domain loss weight
        gamma: float = 10.0  # γ of the λ schedule
        hidden: int = 1024  # discriminator width
        bottleneck: int = 256  # B's width (0: none; D reads the pooled features)
        lr_ratio: float = 10.0  # B and C learn at lr_ratio × train.lr
        discriminator_lr: float = 1e-3  # D's own, constant
        average_from: Optional[float] = None  # evaluate and keep the weights' running mean past this progress
        sharpness_rho: Optional[float] = 0.05  # SDAT: ρ of a sharpness-aware task loss (null: plain DANN)

        def __post_init__(self):
            check(self.weight >= 0, f"strategy.weight={self.weight} must be >= 0")
            check(self.gamma > 0, f"strategy.gamma={self.gamma} must be > 0")
            check(self.hidden >= 1, f"strategy.hidden={self.hidden} must be >= 1")
            check(self.bottleneck >= 0, f"strategy.bottleneck={self.bottleneck} must be >= 0")
            check(self.lr_ratio > 0, f"strategy.lr_ratio={self.lr_ratio} must be > 0")
            check(self.discriminator_lr > 0, f"strategy.discriminator_lr={self.discriminator_lr} must be > 0")
            check(self.average_from is None or 0 <= self.average_from < 1,
                  f"strategy.average_from={self.average_from} must be in [0, 1), or null for no averaging")
            check(self.sharpness_rho is None or self.sharpness_rho > 0,
                  f"strategy.sharpness_rho={self.sharpness_rho} must be > 0, or null for plain steps")

    def __init__(self, params, model):
        super().__init__(params, model)
        if params.bottleneck:
            model.head = make_head(model.feature_dim, model.num_labels, model.head.dropout, "bottleneck", params.bottleneck)
        self.grl = GradientReversal()
        self.discriminator = self.make_discriminator(params.bottleneck or model.feature_dim)

    def make_discriminator(self, width: int) -> nn.Module:
        """D, for z of this width."""
        return DomainDiscriminator(width, self.params.hidden)

    def split_head(self) -> Tuple[nn.Module, nn.Module]:
        head = self.model.head
        return (head.bottleneck, head.classifier) if isinstance(head, BottleneckHead) else (nn.Identity(), head)

    def phases(self, data, ctx):
        head = Group("head", [self.model.head], lr=self.params.lr_ratio * ctx.lr)
        discriminator = Group("discriminator", [self.discriminator], lr=self.params.discriminator_lr,
                              betas=(0.5, 0.999), schedule="constant")
        rho = self.params.sharpness_rho
        source_task_loss = lambda batch: self.task_loss(batch)[0]  # noqa: E731  (the source batch alone)
        sharpness = Sharpness(rho, source_task_loss, [self.model]) if rho else None  # D's weights are not perturbed
        return [Phase("train", data.source_train, ctx.epochs, unlabelled=data.target_pool, groups=[head, discriminator],
                      average_from=self.params.average_from, sharpness=sharpness)]

    def encode(self, labelled, unlabelled):
        """z for the source and target batches (source first), the classifier's logits for both, and the domain labels
        (0 source, 1 target)."""
        bottleneck, classifier = self.split_head()
        z = bottleneck(joint_features(self.model, labelled, unlabelled))
        domain = torch.cat([torch.zeros(len(labelled["input_ids"])), torch.ones(len(unlabelled["input_ids"]))])
        return z, classifier(z).float(), domain.to(z.device)

    def loss(self, labelled, unlabelled, progress):
        z, logits, domain = self.encode(labelled, unlabelled)
        task = F.cross_entropy(logits[domain == 0], labelled["labels"])
        lam = dann_lambda(progress, self.params.gamma)
        domain_logits = self.discriminator(self.grl(z, lam)).squeeze(-1).float()
        domain_loss = F.binary_cross_entropy_with_logits(domain_logits, domain)
        domain_acc = ((domain_logits > 0).float() == domain).float().mean()
        return task + self.params.weight * domain_loss, {
            "task_loss": task.item(), "domain_loss": domain_loss.item(), "domain_acc": domain_acc.item(), "lambda": lam,
        }
