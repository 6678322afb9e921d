"""Strict zero-shot classification: no labelled example of any domain, only a description of each class.

A sentence encoder E embeds the text and, through each template t, the description d_c of each class c; the text
goes to the class whose prototype is the most similar (as in the embedding-similarity baseline of Yin et al.,
"Benchmarking Zero-shot Text Classification", EMNLP 2019, with sentence embeddings as in Reimers & Gurevych,
"Sentence-BERT", EMNLP 2019):

    p_c = normalise( mean_t normalise(E(t(d_c))) ),    ŷ = argmax_c cos(E(x), p_c),    P(c|x) ∝ exp(s · cos(E(x), p_c))

The descriptions come from the target domain's `label_descriptions` (default: "This text is {label}.").

`method=cloze` asks a masked-LM head instead (models/cloze.py): "<text> It was [MASK]." scored for each label's
word, "terrible" or "great" (`verbalizers`). It needs a checkpoint with its pretrained masked-LM head; the packaged
MiniLM, a sentence encoder, has none and is refused. Its model cannot be saved (`train.save_model`): an export has
no place for the prompt.

Nothing trains, so no checkpoint is selected (`selection: none`); the similarity model is a plain classifier whose
head holds the prototypes (it exports, predicts and serves like any other). No label of any split is read:
`target_labels_used` and `source_labels_used` are 0. The scale s changes the probabilities (and the entropy-based validators), never the
prediction.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Dict, Iterable, List

import torch
import torch.nn.functional as F

from ..data.batching import TokenizedSet
from ..errors import TransferError
from ..models import make_head
from ..models.cloze import ClozeModel
from .base import Context, Phase, Strategy, check

log = logging.getLogger(__name__)

DEFAULT_DESCRIPTION = "This text is {label}."


def class_descriptions(domain) -> List[str]:
    """One description per label: the domain's own, else the default built from the label's name."""
    if domain.label_descriptions is not None:
        return list(domain.label_descriptions)
    return [DEFAULT_DESCRIPTION.format(label=label) for label in domain.labels]


class ZeroShot(Strategy):
    name = "zero_shot"
    source_labels = False

    @dataclass
    class Params:
        # each is formatted with {description} (and {label}); the prototype averages the templates' embeddings
        templates: List[str] = field(default_factory=lambda: ["{description}"])
        scale: float = 20.0  # s: the logits' scale (the inverse temperature)
        method: str = "similarity"  # similarity (a sentence encoder) | cloze (a masked-LM head)
        prompt: str = "It was {mask}."  # cloze: follows each text; {mask} is the tokenizer's mask token
        verbalizers: Dict[str, str] = field(default_factory=lambda: {"negative": "terrible", "positive": "great"})

        def __post_init__(self):
            check(len(self.templates) >= 1, "strategy.templates is empty; give at least one, e.g. ['{description}']")
            for template in self.templates:
                check("{description}" in template or "{label}" in template,
                      f"strategy.templates: '{template}' names neither {{description}} nor {{label}}")
            check(self.scale > 0, f"strategy.scale={self.scale} must be > 0")
            check(self.method in ("similarity", "cloze"), f"strategy.method={self.method} must be similarity or cloze")
            check(self.prompt.count("{mask}") == 1, f"strategy.prompt: '{self.prompt}' must name {{mask}} once")

    def __init__(self, params, model):
        super().__init__(params, model)
        if params.method == "cloze":
            self.model = ClozeModel(model)
        else:
            model.head = make_head(model.feature_dim, model.num_labels, 0.0, "cosine")
            model.head.scale.fill_(params.scale)

    def phases(self, data, ctx: Context) -> Iterable[Phase]:
        domain = data.target_domain
        if self.params.method == "cloze":
            missing = [label for label in domain.labels if not self.params.verbalizers.get(label)]
            if missing:
                raise TransferError(f"strategy.verbalizers has no word for label '{missing[0]}' of domain "
                                    f"'{domain.name}'; add one, e.g. +strategy.verbalizers.{missing[0]}=WORD")
            words = [self.params.verbalizers[label] for label in domain.labels]
            self.model.set_prompt(ctx.tokenizer, self.params.prompt, words, domain.labels)
            log.info("zero-shot cloze: '<text> %s' with %s", self.params.prompt.format(mask="___"),
                     ", ".join(f"{label}={word}" for label, word in zip(domain.labels, words)))
            return [Phase("zero_shot", TokenizedSet([]), epochs=0)]
        descriptions = class_descriptions(domain)
        if len(descriptions) != len(domain.labels):
            raise TransferError(f"domain '{domain.name}': label_descriptions gives {len(descriptions)} description(s) "
                                f"for {len(domain.labels)} labels; give one description per label, in order")
        self.model.head.prototypes.data.copy_(self.prototypes(descriptions, domain.labels, ctx))
        log.info("zero-shot prototypes from: %s", "; ".join(
            t.format(description=d, label=l) for d, l in zip(descriptions, domain.labels) for t in self.params.templates))
        return [Phase("zero_shot", TokenizedSet([]), epochs=0)]

    def prototypes(self, descriptions: List[str], labels: List[str], ctx: Context) -> torch.Tensor:
        texts = [t.format(description=d, label=l) for d, l in zip(descriptions, labels) for t in self.params.templates]
        embedded = F.normalize(ctx.embed(self.model, texts), dim=-1)
        per_class = embedded.view(len(descriptions), len(self.params.templates), -1).mean(1)
        return F.normalize(per_class, dim=-1)
