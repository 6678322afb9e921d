"""Knowledge distillation, teacher -> student (Hinton et al., "Distilling the Knowledge in a Neural Network", 2015).

1. Train the teacher (any model: `strategy.teacher=bert-base`, a name from `transfer list` or a hub id / folder)
   on the labelled source.
2. Train the student (the run's `model`) on hard source labels and on the teacher's soft targets, over source and
   unlabelled target text (the transfer set):

       L = a · CE(s(x_s), y_s) + (1 - a) · ½ [KD(s(x_s), t(x_s)) + KD(s(x_t), t(x_t))],
       KD(z_s, z_t) = T² · KL(softmax(z_t / T) || softmax(z_s / T))

The teacher must share the student's tokenizer vocabulary (MiniLM, BERT-base and the tiny model all use BERT's
uncased vocabulary); with the defaults, MiniLM teaches MiniLM (self-distillation, Furlanello et al. 2018).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional

import torch

from ..errors import TransferError
from ..losses import DistillationLoss
from ..models import build_model, load_tokenizer, model_config
from .base import Context, Phase, Strategy, check


class Distill(Strategy):
    name = "distill"
    adapts = True

    @dataclass
    class Params:
        teacher: str = "minilm"  # a model option (configs/model), or a hub id or local folder
        temperature: float = 2.0  # T
        alpha: float = 0.5  # a, the weight of the hard source labels
        teacher_epochs: Optional[int] = None  # default: train.epochs

        def __post_init__(self):
            check(self.temperature > 0, f"strategy.temperature={self.temperature} must be > 0")
            check(0 <= self.alpha <= 1, f"strategy.alpha={self.alpha} must be in [0, 1]")
            check(self.teacher_epochs is None or self.teacher_epochs >= 1,
                  f"strategy.teacher_epochs={self.teacher_epochs} must be >= 1")

    def __init__(self, params, model):
        super().__init__(params, model)
        self.teacher_config = model_config(params.teacher)
        self.teacher = build_model(self.teacher_config, model.num_labels, model.backbone.config.vocab_size)
        self.distillation = DistillationLoss(params.temperature)

    def phases(self, data, ctx: Context) -> Iterable[Phase]:
        if load_tokenizer(self.teacher_config).get_vocab() != ctx.tokenizer.get_vocab():
            raise TransferError(f"teacher '{self.params.teacher}' uses a different tokenizer vocabulary than the "
                                "student model; choose a teacher with the same tokenizer (e.g. bert-base for minilm)")
        yield Phase("teacher", data.source_train, self.params.teacher_epochs or ctx.epochs, model=self.teacher,
                    loss=self.teacher_loss)
        self.freeze(self.teacher)
        yield Phase("student", data.source_train, ctx.epochs, unlabelled=data.target_pool)

    def teacher_loss(self, labelled, unlabelled, progress):
        loss, _ = self.task_loss(labelled, self.teacher)
        return loss, {}

    def loss(self, labelled, unlabelled, progress):
        task, source_features = self.task_loss(labelled)
        with torch.no_grad():
            soft_source, soft_target = self.teacher(**labelled), self.teacher(**unlabelled)
        kd = 0.5 * (self.distillation(self.model.head(source_features), soft_source)
                    + self.distillation(self.model(**unlabelled), soft_target))
        a = self.params.alpha
        return a * task + (1 - a) * kd, {"task_loss": task.item(), "kd_loss": kd.item()}
