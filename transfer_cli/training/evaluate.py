"""Inference over a data set: outputs in the data set's original order; logits -> accuracy and macro-F1."""

from __future__ import annotations

from typing import Callable, Dict

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


def evaluate(model, data: TokenizedSet, batch_size: int, pad_id: int, accelerator) -> Dict[str, float]:
    model.eval()
    pred = infer(model, data, batch_size, pad_id, accelerator).argmax(-1).numpy()
    return {
        "accuracy": float(accuracy_score(data.labels, pred)),
        "f1_macro": float(f1_score(data.labels, pred, average="macro", zero_division=0)),
    }
