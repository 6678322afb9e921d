"""Zero-shot, then self-training on the unlabelled target pool: still no label of any domain.

Round 0 is `zero_shot` (each class's prototype from its description). Each round r = 1..R then labels the target
pool with the current model, keeps the most confident share q of each predicted class, balanced across classes
(as the class-balanced self-training of Zou et al., ECCV 2018), and fine-tunes encoder and prototypes on them:

    L = CE(s · cos(E(x_t), p), ŷ_t),   ŷ_t = argmax_c cos(E(x_t), p_c),   x_t among the q most confident of ŷ_t

A confidence threshold, as in `self_training`, does not carry over: a cosine head's probabilities depend on its
scale s, so the share q is what is chosen. With no labels anywhere, no validator can select a checkpoint: each
round keeps its last epoch (`selection: last`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterable

import numpy as np
import torch

from ..data.batching import TokenizedSet
from .base import Context, Phase, check
from .zero_shot import ZeroShot

log = logging.getLogger(__name__)


def most_confident(probabilities: torch.Tensor, share: float) -> np.ndarray:
    """Indices of the top `share` of each predicted class by confidence, as many per class as the rarest class
    keeps; sorted."""
    confidence, predicted = probabilities.max(-1)
    per_class = []
    for c in range(probabilities.shape[1]):
        index = torch.nonzero(predicted == c).flatten()
        per_class.append(index[confidence[index].argsort(descending=True)].numpy())
    keep = min(int(len(i) * share) for i in per_class)
    return np.sort(np.concatenate([i[:keep] for i in per_class])).astype(np.int64)


class ZeroShotAdapt(ZeroShot):
    name = "zero_shot_adapt"

    @dataclass
    class Params(ZeroShot.Params):
        rounds: int = 2  # R
        share: float = 0.5  # q
        round_epochs: int = 1

        def __post_init__(self):
            super().__post_init__()
            check(self.rounds >= 1, f"strategy.rounds={self.rounds} must be >= 1")
            check(0 < self.share <= 1, f"strategy.share={self.share} must be in (0, 1]")
            check(self.round_epochs >= 1, f"strategy.round_epochs={self.round_epochs} must be >= 1")

    def phases(self, data, ctx: Context) -> Iterable[Phase]:
        list(super().phases(data, ctx))  # the prototypes; its scoring phase is not needed, the rounds' are
        for r in range(1, self.params.rounds + 1):
            probabilities = ctx.probabilities(self.model, data.target_pool)
            chosen = most_confident(probabilities, self.params.share)
            if len(chosen) == 0:
                log.warning("zero_shot_adapt: round %d finds no class predicted often enough to keep; stopping", r)
                if r == 1:  # nothing trained: the prototypes alone
                    yield Phase("zero_shot", TokenizedSet([]), epochs=0)
                return
            pseudo = probabilities.argmax(-1).numpy()[chosen]
            log.info("zero_shot_adapt round %d: %d of %d target texts pseudo-labelled (per class %s)", r, len(chosen),
                     len(data.target_pool), np.bincount(pseudo, minlength=probabilities.shape[1]).tolist())
            train = TokenizedSet([data.target_pool.ids[i] for i in chosen], pseudo)
            yield Phase(f"round_{r}", train, self.params.round_epochs, selection="last")
