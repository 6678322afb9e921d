"""Deep CORAL: align the second-order statistics (feature covariances) of the two domains
(Sun & Saenko, "Deep CORAL: Correlation Alignment for Deep Domain Adaptation", ECCV workshops 2016).

    L = CE(head(F(x_s)), y_s) + w * ||C_s - C_t||_F² / (4 d²),   C = covariance of the pooled features F in a batch.
"""

from dataclasses import dataclass

from ..losses import CoralLoss
from .base import Strategy, check


class CORAL(Strategy):
    name = "coral"
    adapts = True

    @dataclass
    class Params:
        weight: float = 1.0  # w

        def __post_init__(self):
            check(self.weight >= 0, f"strategy.weight={self.weight} must be >= 0")

    def __init__(self, params, model):
        super().__init__(params, model)
        self.coral = CoralLoss()

    def loss(self, labelled, unlabelled, progress):
        task, source_features = self.task_loss(labelled)
        distance = self.coral(source_features, self.model.features(**unlabelled))
        return task + self.params.weight * distance, {"task_loss": task.item(), "coral": distance.item()}
