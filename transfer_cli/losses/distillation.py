"""Knowledge distillation (Hinton et al., "Distilling the Knowledge in a Neural Network", 2015)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class DistillationLoss(nn.Module):
    """L_KD = T² · KL(softmax(z_t / T) || softmax(z_s / T)), teacher logits z_t (no gradient), student logits z_s.

    The T² keeps the gradient scale independent of the temperature T."""

    def __init__(self, temperature: float = 2.0):
        super().__init__()
        self.temperature = temperature

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        t = self.temperature
        soft_targets = F.softmax(teacher.detach().float() / t, -1)
        return F.kl_div(F.log_softmax(student.float() / t, -1), soft_targets, reduction="batchmean") * t * t
