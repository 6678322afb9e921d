"""Inference over a data set: outputs in the data set's original order; logits -> accuracy and macro-F1."""

from __future__ import annotations

from typing import Callable, Dict, Tuple

import numpy as np
import torch
from sklearn.metrics import accuracy_score, f1_score

from ..data.batching import TokenizedSet, eval_loader


@torch.no_grad()
def infer(fn: Callable[..., torch.Tensor], data: TokenizedSet, batch_size: int, pad_id: int, accelerator) -> torch.Tensor:
    """`fn(input_ids, attention_mask)` on every example (float32, on the CPU), in the set's order."""
    index, outputs = [], []
    for batch in eval_loader(data, batch_size, pad_id):
        with accelerator.autocast():
            out = fn(batch["input_ids"].to(accelerator.device), batch["attention_mask"].to(accelerator.device))
        outputs.append(out.float().cpu())
        index.append(batch["index"])
    return torch.cat(outputs)[torch.cat(index).argsort()]


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
