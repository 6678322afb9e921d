"""Inference over a data set: outputs in the data set's original order; logits -> accuracy and macro-F1."""

from __future__ import annotations

from typing import Callable, Dict, Tuple

import numpy as np
import torch
from sklearn.metrics import accuracy_score, f1_score

from .data.batching import TokenizedSet, eval_loader


@torch.no_grad()
def infer(fn: Callable[..., torch.Tensor], data: TokenizedSet, batch_size: int, pad_id: int, accelerator) -> torch.Tensor:
    """`fn(input_ids, attention_mask)` on every example (float32, on the CPU), in the set's order. With several
    processes each evaluates its shard of the batches and every process gets all the outputs; the batches that
    Accelerate repeats to even the shards out are dropped by example index, so each example counts once."""
    pieces = []
    for batch in accelerator.prepare_data_loader(eval_loader(data, batch_size, pad_id), device_placement=True):
        with accelerator.autocast():
            out = fn(batch["input_ids"], batch["attention_mask"])
        pieces.append((batch["index"].cpu(), out.float().cpu()))
    if accelerator.num_processes > 1:
        pieces = accelerator.gather_for_metrics(pieces, use_gather_object=True)
    index, outputs = torch.cat([i for i, _ in pieces]), torch.cat([o for _, o in pieces])
    position = torch.full((len(data),), -1, dtype=torch.long)
    position[index] = torch.arange(len(index))  # a repeated example: any of its (equal) outputs
    assert (position >= 0).all(), "an example was not evaluated"
    return outputs[position]


def predict(model, data: TokenizedSet, batch_size: int, pad_id: int, accelerator) -> Tuple[torch.Tensor, torch.Tensor]:
    """The pooled features and the logits of every example, from one forward pass."""
    model.eval()

    def features_and_logits(input_ids, attention_mask):
        features = model.features(input_ids, attention_mask)
        return torch.cat([features, model.head(features).to(features.dtype)], -1)

    both = infer(features_and_logits, data, batch_size, pad_id, accelerator)
    return both[:, : model.feature_dim], both[:, model.feature_dim :]


def classification_scores(logits: torch.Tensor, labels: np.ndarray) -> Dict[str, float]:
    pred = logits.argmax(-1).numpy()
    return {
        "accuracy": float(accuracy_score(labels, pred)),
        "f1_macro": float(f1_score(labels, pred, average="macro", zero_division=0)),
    }
