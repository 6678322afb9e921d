"""The strategy contract.

The loop owns everything generic (batching, optimiser, schedule, precision, accumulation, evaluation, selection).
A strategy owns what makes it different:
- `Params`: its hyperparameters, validated from its YAML;
- its extra modules (created in `__init__`, trained with the model);
- `phases()`: what each training phase trains on (default: labelled source, plus unlabelled target if it adapts);
- `forward()`: the per-step loss from a labelled batch and, when it adapts, an unlabelled target batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..data import RunData
from ..errors import TransferError
from ..data.batching import TokenizedSet
from ..models import TransferModel

Logs = Dict[str, float]


def check(ok: bool, message: str) -> None:
    """For `Params.__post_init__`: a parameter out of range is a user error."""
    if not ok:
        raise TransferError(message)


@dataclass
class Phase:
    """One stage of training. `selection` picks its checkpoint: source_val (label-free w.r.t. the target),
    target_val (oracle runs only), or last (no held-out data, e.g. k-shot fine-tuning)."""

    name: str
    labelled: TokenizedSet
    epochs: int
    unlabelled: Optional[TokenizedSet] = None
    selection: str = "source_val"
    val: Optional[TokenizedSet] = None
    lr: Optional[float] = None


class Strategy(nn.Module):
    name = "base"
    target_labels = "none"  # which target labels it uses: none | few | all
    oracle = False  # trained or selected with target labels: an upper bound, not a transfer result
    adapts = False  # draws unlabelled target batches alongside the labelled ones

    @dataclass
    class Params:
        pass

    def __init__(self, params, model: TransferModel):
        super().__init__()
        self.params = params
        self.model = model

    def phases(self, data: RunData, epochs: int, seed: int) -> List[Phase]:
        return [Phase("train", data.source_train, epochs, unlabelled=data.target_pool if self.adapts else None)]

    def task_loss(self, batch: dict) -> Tuple[torch.Tensor, torch.Tensor]:
        """Cross-entropy on a labelled batch, and the pooled features it came from."""
        features = self.model.features(**batch)
        return F.cross_entropy(self.model.head(features).float(), batch["labels"]), features

    def forward(self, labelled: dict, unlabelled: Optional[dict], progress: float) -> Tuple[torch.Tensor, Logs]:
        """The loss of one step; `progress` runs from 0 to 1 over the phase (for schedules such as DANN's λ)."""
        loss, _ = self.task_loss(labelled)
        return loss, {}
