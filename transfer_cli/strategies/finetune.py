"""Fine-tuning with few target labels: train on the source, then fine-tune on k labelled target examples.

k is class-balanced and drawn from the target adaptation pool (never from the test split). With no held-out target
labels to select on, the few-shot phase keeps its last epoch."""

from dataclasses import dataclass
from typing import Optional

from .base import Phase, Strategy, check


class Finetune(Strategy):
    name = "finetune"
    target_labels = "few"

    @dataclass
    class Params:
        k: int = 100  # labelled target examples
        target_epochs: int = 5
        target_lr: Optional[float] = None  # default: train.lr

        def __post_init__(self):
            check(self.k >= 1, f"strategy.k={self.k} must be >= 1 (labelled target examples)")
            check(self.target_epochs >= 1, f"strategy.target_epochs={self.target_epochs} must be >= 1")
            check(self.target_lr is None or self.target_lr > 0, f"strategy.target_lr={self.target_lr} must be > 0")

    def phases(self, data, ctx):
        few = data.labelled_target(self.params.k, ctx.seed)
        return [
            Phase("source", data.source_train, ctx.epochs),
            Phase("target_k_shot", few, self.params.target_epochs, selection="last", lr=self.params.target_lr),
        ]
