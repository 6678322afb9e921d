"""Domain-adaptive masked-language modelling, then or jointly with the task: UDALM (Karouzos et al., "UDALM:
Unsupervised Domain Adaptation through Language Modeling", NAACL 2021), after DAPT (Gururangan et al., ACL 2020).

    phase "mlm" (pretrain_epochs, DAPT):  L = MLM(x_t)
    phase "joint" (UDALM):                L = CE(f(x_s), y_s) + w · MLM(x_t)

MLM(x) is BERT's masked-token cross-entropy (15% of tokens; 80% [MASK], 10% random, 10% kept) on unlabelled target
text (and source text with `on_source`). The MLM head's decoder is tied to the input embeddings, so backbones
shipped without an MLM head (MiniLM) need only its small transform trained from scratch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch
import torch.nn.functional as F

from ..data.batching import TokenizedSet
from ..losses import MaskedLMHead, mask_tokens
from .base import Context, Phase, Strategy, check


class MLMAdapt(Strategy):
    name = "mlm_adapt"
    adapts = True

    @dataclass
    class Params:
        pretrain_epochs: int = 1  # MLM-only epochs first (0: joint from the start, as UDALM)
        weight: float = 1.0  # w, the MLM weight in the joint phase (0: DAPT, then plain source fine-tuning)
        mask_probability: float = 0.15
        on_source: bool = False  # also model the source text

        def __post_init__(self):
            check(self.pretrain_epochs >= 0, f"strategy.pretrain_epochs={self.pretrain_epochs} must be >= 0")
            check(self.weight >= 0, f"strategy.weight={self.weight} must be >= 0")
            check(0 < self.mask_probability < 1, f"strategy.mask_probability={self.mask_probability} must be in (0, 1)")

    def __init__(self, params, model):
        super().__init__(params, model)
        self.mlm_head = MaskedLMHead(model.feature_dim, model.backbone.get_input_embeddings().num_embeddings)

    def phases(self, data, ctx: Context) -> Iterable[Phase]:
        self.special_ids, self.mask_id = ctx.tokenizer.all_special_ids, ctx.tokenizer.mask_token_id
        text = data.target_pool
        if self.params.on_source:
            text = TokenizedSet(data.target_pool.ids + data.source_train.ids)
        if self.params.pretrain_epochs:
            yield Phase("mlm", text, self.params.pretrain_epochs, selection="last")
        yield Phase("joint", data.source_train, ctx.epochs, unlabelled=text if self.params.weight > 0 else None)

    def mlm_loss(self, batch: dict) -> torch.Tensor:
        embeddings = self.model.backbone.get_input_embeddings().weight
        ids, labels = mask_tokens(batch["input_ids"], batch["attention_mask"], self.special_ids, self.mask_id,
                                  len(embeddings), self.params.mask_probability)
        hidden = self.model.backbone(input_ids=ids, attention_mask=batch["attention_mask"]).last_hidden_state
        picked = labels != -100
        if not picked.any():
            return hidden.sum() * 0.0
        return F.cross_entropy(self.mlm_head(hidden[picked], embeddings).float(), labels[picked])

    def forward(self, labelled, unlabelled, progress):
        if self.phase == "mlm":
            mlm = self.mlm_loss(labelled)
            return mlm, {"mlm_loss": mlm.item()}
        task, _ = self.task_loss(labelled)
        if unlabelled is None:
            return task, {"task_loss": task.item()}
        mlm = self.mlm_loss(unlabelled)
        return task + self.params.weight * mlm, {"task_loss": task.item(), "mlm_loss": mlm.item()}
