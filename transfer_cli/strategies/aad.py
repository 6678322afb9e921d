"""AAD: adversarial adaptation with distillation (Ryu & Lee, "Knowledge Distillation for BERT Unsupervised Domain
Adaptation", 2020): ADDA, plus distillation from the source model, which keeps the target encoder a good input for
the frozen source classifier C. As in the authors' code, D's "real" side is the target encoder's own features of
source text (detached), D's weights are clamped to ±0.01, and there is no update gate:

    L_D = BCE(D(h(M_t(x_s))), 1) + BCE(D(h(M_t(x_t))), 0)
    L_M = a · BCE(D(h(M_t(x_t))), 1) + b · ½ Σ_{x ∈ {x_s, x_t}} T² · KL(softmax(C(M_s(x)) / T) || softmax(C(M_t(x)) / T))

with T = 20 and the teacher C(M_s(x)) without dropout. Deviations: the authors distil on source text only; here on
the source and the target text, the text the encoder is adapted on. Their code runs 3 source and 3 adaptation
epochs; here the run's epochs (2), then `adapt_epochs` (2). The paper
evaluated on these Amazon reviews; its code scores all target data (protocol=transductive) at max_length 128.
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
        gate: float = 0.0  # the authors' code has none
        clamp: float = 0.01
        temperature: float = 20.0  # T
        adversarial_weight: float = 1.0  # a
        kd_weight: float = 1.0  # b

        def __post_init__(self):
            super().__post_init__()
            check(self.temperature > 0, f"strategy.temperature={self.temperature} must be > 0")
            check(self.adversarial_weight >= 0, f"strategy.adversarial_weight={self.adversarial_weight} must be >= 0")
            check(self.kd_weight >= 0, f"strategy.kd_weight={self.kd_weight} must be >= 0")

    def __init__(self, params, model):
        super().__init__(params, model)
        self.distillation = DistillationLoss(params.temperature)

    def adapt_loss(self, labelled, unlabelled, progress):
        source, target = self.model.features(**labelled), self.model.features(**unlabelled)
        d_loss, m_loss, d_acc = self.adversarial(source, target)
        with torch.no_grad():
            teacher_source, teacher_target = self.source_model(**labelled), self.source_model(**unlabelled)
        head = self.model.head
        kd = 0.5 * (self.distillation(head(source), teacher_source) + self.distillation(head(target), teacher_target))
        p = self.params
        return d_loss + p.adversarial_weight * m_loss + p.kd_weight * kd, {
            "d_loss": d_loss.item(), "m_loss": m_loss.item(), "kd_loss": kd.item(), "domain_acc": d_acc}
