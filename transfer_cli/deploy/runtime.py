"""A loaded classifier for predict and serve: a Hugging Face folder (PyTorch) or an ONNX export (onnxruntime), behind
one call: token ids in, class probabilities and pooled features out."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Tuple

import numpy as np

from ..models.exported import model_folder

ONNX_FILE = "model.onnx"


class Classifier:
    def __init__(self, path: Path, threads: int = 0):
        from transformers import AutoTokenizer
        from transformers.utils import logging as hf_logging

        from .. import hf  # noqa: F401 (registers the exported class, whose config the tokenizer reads too)

        hf_logging.disable_progress_bar()
        self.folder = model_folder(path)
        self.tokenizer = AutoTokenizer.from_pretrained(self.folder)
        config = json.loads((self.folder / "config.json").read_text())
        self.labels: List[str] = [config["id2label"][str(i)] for i in range(len(config["id2label"]))]
        self.label2id = {label: i for i, label in enumerate(self.labels)}
        self.max_length = min(self.tokenizer.model_max_length, config["encoder"].get("max_position_embeddings", 512))
        self.pad_id = self.tokenizer.pad_token_id or 0
        self.onnx = (self.folder / ONNX_FILE).exists()
        if self.onnx:
            import onnxruntime as ort

            options = ort.SessionOptions()
            if threads:
                options.intra_op_num_threads = threads
            self.session = ort.InferenceSession(str(self.folder / ONNX_FILE), options, providers=["CPUExecutionProvider"])
            self.device = "cpu (onnxruntime)"
        else:
            import torch
            from transformers import AutoModelForSequenceClassification

            if threads:
                torch.set_num_threads(threads)
            self.device = "cuda" if torch.cuda.is_available() else "cpu"
            self.model = AutoModelForSequenceClassification.from_pretrained(self.folder).to(self.device).eval()

    def tokenize(self, texts: List[str]) -> List[np.ndarray]:
        return [np.asarray(ids, dtype=np.int64)
                for ids in self.tokenizer(texts, truncation=True, max_length=self.max_length)["input_ids"]]

    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """(class probabilities, pooled features) of a padded batch."""
        if self.onnx:
            logits, features = self.session.run(None, {"input_ids": input_ids.astype(np.int64),
                                                       "attention_mask": attention_mask.astype(np.int64)})
        else:
            import torch

            with torch.no_grad():
                ids = torch.as_tensor(input_ids, device=self.device)
                mask = torch.as_tensor(attention_mask, device=self.device)
                features = self.model.encode(ids, mask)
                logits = self.model.head(features)
            logits, features = logits.float().cpu().numpy(), features.float().cpu().numpy()
        logits = logits - logits.max(1, keepdims=True)
        probabilities = np.exp(logits)
        return probabilities / probabilities.sum(1, keepdims=True), features

    def predict(self, ids: List[np.ndarray], batch_size: int) -> Tuple[np.ndarray, np.ndarray]:
        """Probabilities and features of tokenized texts, batched longest first (little padding), in their order."""
        order = np.argsort([-len(i) for i in ids], kind="stable")
        probabilities = np.zeros((len(ids), len(self.labels)), dtype=np.float32)
        features = None
        for start in range(0, len(ids), batch_size):
            index = order[start : start + batch_size]
            width = max(len(ids[i]) for i in index)
            batch = np.full((len(index), width), self.pad_id, dtype=np.int64)
            mask = np.zeros((len(index), width), dtype=np.int64)
            for row, i in enumerate(index):
                batch[row, : len(ids[i])], mask[row, : len(ids[i])] = ids[i], 1
            p, f = self(batch, mask)
            if features is None:
                features = np.zeros((len(ids), f.shape[1]), dtype=np.float32)
            probabilities[index], features[index] = p, f
        return probabilities, features if features is not None else np.zeros((0, 0), dtype=np.float32)
