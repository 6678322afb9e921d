"""Evaluation: one forward pass per batch, predictions -> accuracy and macro-F1."""

from __future__ import annotations

from typing import Dict

import numpy as np
import torch
from sklearn.metrics import accuracy_score, f1_score


@torch.no_grad()
def predict(model, loader, accelerator) -> Dict[str, np.ndarray]:
    """Predicted classes and true labels, in the data set's original order."""
    model.eval()
    index, preds, labels = [], [], []
    for batch in loader:
        with accelerator.autocast():
            logits = model(batch["input_ids"].to(accelerator.device), batch["attention_mask"].to(accelerator.device))
        preds.append(logits.argmax(-1).cpu())
        index.append(batch["index"])
        labels.append(batch["labels"])
    order = torch.cat(index).argsort()
    return {"pred": torch.cat(preds)[order].numpy(), "label": torch.cat(labels)[order].numpy()}


def evaluate(model, loader, accelerator) -> Dict[str, float]:
    out = predict(model, loader, accelerator)
    return {
        "accuracy": float(accuracy_score(out["label"], out["pred"])),
        "f1_macro": float(f1_score(out["label"], out["pred"], average="macro", zero_division=0)),
    }
