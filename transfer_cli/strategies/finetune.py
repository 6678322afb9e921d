"""Fine-tuning with few target labels: train on the source, then fine-tune on k labelled target examples.

k is class-balanced and drawn from the target adaptation pool (never from the test split). With no held-out target
labels to select on, the few-shot phase keeps its last epoch."""

from dataclasses import dataclass
from typing import Optional

from ..errors import TransferError
from .base import Phase, Strategy


class Finetune(Strategy):
    name = "finetune"
    target_labels = "few"

    @dataclass
    class Params:
        k: int = 100  # labelled target examples
        target_epochs: int = 5
        target_lr: Optional[float] = None  # default: train.lr

    def phases(self, data, epochs, seed):
        if self.params.k < 1:
            raise TransferError(f"strategy.k={self.params.k}: the number of target labels must be at least 1")
        few = data.labelled_target(self.params.k, seed)
        return [
            Phase("source", data.source_train, epochs),
            Phase("target_k_shot", few, self.params.target_epochs, selection="last", lr=self.params.target_lr),
        ]
