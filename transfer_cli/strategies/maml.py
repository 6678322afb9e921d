"""Meta-learning across source domains, then few-shot adaptation to the target: first-order MAML
(Finn et al., "Model-Agnostic Meta-Learning", ICML 2017; first-order variant §5.2).

Each source domain is a task, and each batch comes from one domain. A batch splits into support and query halves:

    θ' = θ - α ∇_θ L_support(θ)      (inner steps, gradients treated as constants: first order)
    θ  ← θ - β ∇_θ' L_query(θ')      (the loop's optimiser, with the run's lr β)

so θ becomes an initialisation that adapts to a new domain in a few steps. Then it is fine-tuned on k labelled
target examples, as in `finetune`. Use several sources, e.g. source=[books,dvd,electronics].
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterable, Optional

import torch
import torch.nn.functional as F
from torch.func import functional_call

from .base import Context, Phase, Strategy, check

log = logging.getLogger(__name__)


class MAML(Strategy):
    name = "maml"
    target_labels = "few"

    @dataclass
    class Params:
        inner_lr: float = 1.0e-3  # α
        inner_steps: int = 1
        k: int = 100  # labelled target examples
        target_epochs: int = 5
        target_lr: Optional[float] = None  # default: train.lr

        def __post_init__(self):
            check(self.inner_lr >= 0, f"strategy.inner_lr={self.inner_lr} must be >= 0")
            check(self.inner_steps >= 1, f"strategy.inner_steps={self.inner_steps} must be >= 1")
            check(self.k >= 1, f"strategy.k={self.k} must be >= 1 (labelled target examples)")
            check(self.target_epochs >= 1, f"strategy.target_epochs={self.target_epochs} must be >= 1")
            check(self.target_lr is None or self.target_lr > 0, f"strategy.target_lr={self.target_lr} must be > 0")

    def phases(self, data, ctx: Context) -> Iterable[Phase]:
        if len(data.source_names) < 2:
            log.warning("maml with one source domain has one task; use several, e.g. source=[books,dvd,electronics]")
        yield Phase("meta", data.source_train, ctx.epochs, batch_by=data.source_domain, loss=self.meta_loss)
        few = data.labelled_target(self.params.k, ctx.seed)
        yield Phase("target_k_shot", few, self.params.target_epochs, selection="last", lr=self.params.target_lr)

    def loss_with(self, weights: dict, batch: dict) -> torch.Tensor:
        logits = functional_call(self.model, weights, (batch["input_ids"], batch["attention_mask"]))
        return F.cross_entropy(logits.float(), batch["labels"])

    def meta_loss(self, labelled, unlabelled, progress):
        n = len(labelled["labels"])
        if n < 2:  # no support/query split: a plain step
            return self.loss(labelled, unlabelled, progress)
        support = {k: v[: n // 2] for k, v in labelled.items()}
        query = {k: v[n // 2:] for k, v in labelled.items()}
        fast = {name: p for name, p in self.model.named_parameters() if p.requires_grad}
        for _ in range(self.params.inner_steps):
            support_loss = self.loss_with(fast, support)
            grads = torch.autograd.grad(support_loss, list(fast.values()), allow_unused=True)
            fast = {name: p if g is None else p - self.params.inner_lr * g.detach() for (name, p), g in zip(fast.items(), grads)}
        query_loss = self.loss_with(fast, query)
        return query_loss, {"support_loss": support_loss.item(), "query_loss": query_loss.item()}
