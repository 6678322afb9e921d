"""Domain-adaptive masked-language modelling, then jointly with the task: UDALM (Karouzos et al., "UDALM:
Unsupervised Domain Adaptation through Language Modeling", NAACL 2021), after DAPT (Gururangan et al., ACL 2020).

    phase "mlm_head" (head_epochs):       L = MLM(x_t), the backbone frozen: only the MLM head learns
    phase "mlm" (pretrain_epochs, DAPT):  L = MLM(x_t)
    phase "joint" (UDALM):                L = CE(f(x_s), y_s) + w · MLM(x_t)

MLM(x) is BERT's masked-token cross-entropy (15% of tokens; 80% [MASK], 10% random, 10% kept) on unlabelled target
text (and source text with `on_source`). UDALM's mixed loss λ·CE + (1 - λ)·MLM is this one with w = (1 - λ)/λ, up
to the learning rate's scale; w = 1 is λ = 1/2, each step one labelled source batch and one target batch.
UDALM starts from BERT with its pretrained MLM head, and so does this where the checkpoint has one (bert-base,
roberta-base). Backbones shipped without one (MiniLM, a sentence-transformers model) get a fresh head whose decoder
is tied to the input embeddings; its small transform first learns alone, with the backbone frozen (`head_epochs`),
so that a random head's large early gradients never reach the backbone.
Deviations: every phase trains with the run's AdamW and schedule; DAPT is `pretrain_epochs` (1) over the target
pool, not a separate long pre-training run; the joint phase runs the run's epochs and keeps the epoch that
`selection` picks.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from ..data.batching import TokenizedSet
from ..errors import TransferError
from ..losses import MaskedLMHead, mask_tokens
from ..models import NoMaskedLMHead, load_masked_lm_head
from .base import Context, Phase, Strategy, check

log = logging.getLogger(__name__)


class PretrainedMLMHead(nn.Module):
    """A checkpoint's own masked-LM head, called as MaskedLMHead is (its decoder is already tied to the embeddings)."""

    def __init__(self, head: nn.Module):
        super().__init__()
        self.head = head

    def forward(self, hidden: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        return self.head(hidden)


class MLMAdapt(Strategy):
    name = "mlm_adapt"
    adapts = True

    @dataclass
    class Params:
        head_epochs: int = 1  # MLM epochs with the backbone frozen, to initialise a fresh MLM head (0: none; a
        # checkpoint's own head needs none)
        pretrain_epochs: int = 1  # MLM-only epochs (DAPT; 0: joint from the start)
        weight: float = 1.0  # w, the MLM weight in the joint phase (0: DAPT, then plain source fine-tuning)
        mask_probability: float = 0.15
        on_source: bool = False  # also model the source text

        def __post_init__(self):
            check(self.head_epochs >= 0, f"strategy.head_epochs={self.head_epochs} must be >= 0")
            check(self.pretrain_epochs >= 0, f"strategy.pretrain_epochs={self.pretrain_epochs} must be >= 0")
            check(self.weight >= 0, f"strategy.weight={self.weight} must be >= 0")
            check(0 < self.mask_probability < 1, f"strategy.mask_probability={self.mask_probability} must be in (0, 1)")

    def __init__(self, params, model):
        super().__init__(params, model)
        try:
            self.mlm_head = PretrainedMLMHead(load_masked_lm_head(model))
            self.fresh_head = False
        except TransferError as e:
            unusable = not isinstance(e, NoMaskedLMHead)  # a head this cannot use (DistilBERT's is several modules)
            (log.warning if unusable else log.info)("mlm_adapt: a fresh MLM head (%s)", e)
            self.mlm_head = MaskedLMHead(model.feature_dim, model.backbone.get_input_embeddings().num_embeddings)
            self.fresh_head = True

    def phases(self, data, ctx: Context) -> Iterable[Phase]:
        self.special_ids, self.mask_id = ctx.tokenizer.all_special_ids, ctx.tokenizer.mask_token_id
        text = data.target_pool
        if self.params.on_source:
            text = TokenizedSet(data.target_pool.ids + data.source_train.ids)
        if self.params.head_epochs and self.fresh_head:
            yield Phase("mlm_head", text, self.params.head_epochs, selection="last", loss=self.mlm_phase_loss,
                        frozen=[self.model])
        if self.params.pretrain_epochs:
            yield Phase("mlm", text, self.params.pretrain_epochs, selection="last", loss=self.mlm_phase_loss)
        yield Phase("joint", data.source_train, ctx.epochs, unlabelled=text if self.params.weight > 0 else None)

    def mlm_loss(self, batch: dict) -> torch.Tensor:
        embeddings = self.model.backbone.get_input_embeddings().weight
        ids, labels = mask_tokens(batch["input_ids"], batch["attention_mask"], self.special_ids, self.mask_id,
                                  len(embeddings), self.params.mask_probability)
        hidden = self.model.backbone(input_ids=ids, attention_mask=batch["attention_mask"]).last_hidden_state
        picked = labels != -100
        if not picked.any():  # nothing masked: a zero that still has a gradient (the head trains in every MLM phase)
            return self.mlm_head(hidden[:, 0], embeddings).sum() * 0.0
        return F.cross_entropy(self.mlm_head(hidden[picked], embeddings).float(), labels[picked])

    def mlm_phase_loss(self, text, unlabelled, progress):
        mlm = self.mlm_loss(text)
        return mlm, {"mlm_loss": mlm.item()}

    def loss(self, labelled, unlabelled, progress):
        task, _ = self.task_loss(labelled)
        if unlabelled is None:
            return task, {"task_loss": task.item()}
        mlm = self.mlm_loss(unlabelled)
        return task + self.params.weight * mlm, {"task_loss": task.item(), "mlm_loss": mlm.item()}
