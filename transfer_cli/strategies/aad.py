"""AAD: adversarial adaptation with distillation (Ryu & Lee, "Knowledge Distillation for BERT Unsupervised Domain
Adaptation", 2020): ADDA, plus distillation from the source model that keeps the target encoder a good input for the
frozen source classifier C:

    L_M = BCE(D(M_t(x_t)), 1) + w · T² · KL(softmax(C(M_s(x_s)) / T) || softmax(C(M_t(x_s)) / T))

The paper evaluated on these Amazon reviews with T = 20; its code scores all target data (protocol=transductive).
"""

from dataclasses import dataclass

import torch

from ..losses import DistillationLoss
from .adda import ADDA
from .base import check


class AAD(ADDA):
    name = "aad"

    @dataclass
    class Params(ADDA.Params):
        temperature: float = 20.0  # T
        kd_weight: float = 1.0  # w

        def __post_init__(self):
            super().__post_init__()
            check(self.temperature > 0, f"strategy.temperature={self.temperature} must be > 0")
            check(self.kd_weight >= 0, f"strategy.kd_weight={self.kd_weight} must be >= 0")

    def __init__(self, params, model):
        super().__init__(params, model)
        self.distillation = DistillationLoss(params.temperature)

    def forward(self, labelled, unlabelled, progress):
        loss, logs = super().forward(labelled, unlabelled, progress)
        if self.phase != "adapt":
            return loss, logs
        with torch.no_grad():
            teacher = self.source_model(**labelled)
        kd = self.distillation(self.model(**labelled), teacher)
        return loss + self.params.kd_weight * kd, {**logs, "kd_loss": kd.item()}
