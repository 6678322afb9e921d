"""A loaded classifier for predict and serve: a Hugging Face folder (PyTorch) or an ONNX export (onnxruntime), behind
one call: token ids in, class probabilities and pooled features out.

An ensemble (an exported one, or an ensemble's run folder whose members saved their models) loads as one classifier:
each member tokenizes a text its own way (members may differ in tokenizer or max_length), the probabilities are the
mean of the members', and the features are the first member's (what the drift monitor compares with the ensemble's
reference, which holds that member's features)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np

from ..errors import TransferError
from ..outputs import ENSEMBLE_FILE, MEMBERS, model_folder, read_json

ONNX_FILE = "model.onnx"


def ensemble_members(folder: Path) -> Optional[List[Path]]:
    """The member model folders of an ensemble (exported: ensemble.json; a run folder: members.json), else None."""
    if (folder / ENSEMBLE_FILE).exists():
        return [folder / member for member in read_json(folder / ENSEMBLE_FILE)["members"]]
    if (folder / MEMBERS).exists():
        members = [Path(member["folder"]) for member in read_json(folder / MEMBERS)["members"]]
        for member in members:
            if not (member / "model" / "config.json").exists():
                raise TransferError(f"member {member} of the ensemble {folder} has no saved model; an ensemble predicts "
                                    "when every member ran with train.save_model=true")
        return members
    return None


class Classifier:
    def __init__(self, path: Path, threads: int = 0):
        from transformers import AutoTokenizer
        from transformers.utils import logging as hf_logging

        from .. import hf  # noqa: F401 (registers the exported class, whose config the tokenizer reads too)

        hf_logging.disable_progress_bar()
        self.folder = model_folder(path)
        members = ensemble_members(self.folder)
        self.members = None if members is None else [Classifier(member, threads) for member in members]
        if self.members:
            first = self.members[0]
            if any(member.labels != first.labels for member in self.members):
                raise TransferError(f"the members of the ensemble {self.folder} have different labels")
            self.labels, self.label2id, self.onnx = first.labels, first.label2id, all(m.onnx for m in self.members)
            self.device = f"{first.device}, an ensemble of {len(self.members)}"
            return
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

    def tokenize(self, texts: List[str]) -> list:
        """One entry per text: its token ids (an ensemble: a tuple of each member's token ids)."""
        if self.members:
            return list(zip(*(member.tokenize(texts) for member in self.members)))
        return [np.asarray(ids, dtype=np.int64)
                for ids in self.tokenizer(texts, truncation=True, max_length=self.max_length)["input_ids"]]

    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """(class probabilities, pooled features) of a padded batch; one model only (an ensemble: `predict`)."""
        if self.members:
            raise TypeError("an ensemble's members tokenize texts their own way: use tokenize() and predict()")
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
        """Probabilities and features of tokenized texts, batched longest first (little padding), in their order. An
        ensemble: the mean of its members' probabilities, and the first member's features."""
        if self.members:
            outputs = [member.predict([i[k] for i in ids], batch_size) for k, member in enumerate(self.members)]
            return np.mean([p for p, _ in outputs], axis=0).astype(np.float32), outputs[0][1]
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
