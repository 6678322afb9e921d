"""Self-training with confident, class-balanced pseudo-labels (Lee, "Pseudo-Label", ICML-W 2013; class-balanced
selection as in Zou et al., ECCV 2018).

Train on the source; then, for each round r = 1..R: label the unlabelled target pool with the current model, keep
the examples whose top probability is at least τ, balance the classes (the same number per class: the most confident
of each), and train on source ∪ pseudo-labelled target:

    L = CE(f(x_s), y_s) + CE(f(x_t), ŷ_t),   ŷ_t = argmax f(x_t),  max softmax f(x_t) ≥ τ

No target label is used: `target_labels_used` stays 0.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterable, Optional

import numpy as np
import torch

from ..data.batching import TokenizedSet
from .base import Context, Phase, Strategy, check

log = logging.getLogger(__name__)


def select_pseudo_labels(probabilities: torch.Tensor, threshold: float, balance: bool) -> np.ndarray:
    """Indices of the confident examples (top probability >= threshold), the most confident first within each
    class; with `balance`, every class keeps as many as the rarest one has (none if a class has none)."""
    confidence, predicted = probabilities.max(-1)
    per_class = []
    for c in range(probabilities.shape[1]):
        index = torch.nonzero((predicted == c) & (confidence >= threshold)).flatten()
        per_class.append(index[confidence[index].argsort(descending=True)].numpy())
    if balance:
        keep = min(len(i) for i in per_class)
        per_class = [i[:keep] for i in per_class]
    return np.sort(np.concatenate(per_class)).astype(np.int64)


class SelfTraining(Strategy):
    name = "self_training"

    @dataclass
    class Params:
        rounds: int = 2  # R
        threshold: float = 0.9  # τ
        balance: bool = True
        round_epochs: Optional[int] = 1  # default: train.epochs

        def __post_init__(self):
            check(self.rounds >= 1, f"strategy.rounds={self.rounds} must be >= 1")
            check(0 <= self.threshold < 1, f"strategy.threshold={self.threshold} must be in [0, 1)")
            check(self.round_epochs is None or self.round_epochs >= 1,
                  f"strategy.round_epochs={self.round_epochs} must be >= 1")

    def phases(self, data, ctx: Context) -> Iterable[Phase]:
        yield Phase("source", data.source_train, ctx.epochs)
        for r in range(1, self.params.rounds + 1):
            probabilities = ctx.probabilities(self.model, data.target_pool)
            chosen = select_pseudo_labels(probabilities, self.params.threshold, self.params.balance)
            counts = np.bincount(probabilities.argmax(-1).numpy()[chosen], minlength=probabilities.shape[1])
            log.info("self-training round %d: %d of %d target examples pseudo-labelled (per class %s)",
                     r, len(chosen), len(data.target_pool), counts.tolist())
            if len(chosen) == 0:
                log.warning("self-training: no target example reaches strategy.threshold=%s; stopping after %d "
                            "rounds", self.params.threshold, r - 1)
                return
            pseudo = probabilities.argmax(-1).numpy()[chosen]
            train = TokenizedSet(data.source_train.ids + [data.target_pool.ids[i] for i in chosen],
                                 np.concatenate([data.source_train.labels, pseudo]))
            yield Phase(f"round_{r}", train, self.params.round_epochs or ctx.epochs)
