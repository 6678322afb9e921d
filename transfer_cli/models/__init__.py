"""The model: a pretrained backbone, pooling (cls or mean) into one feature vector, then a classification head."""

from __future__ import annotations

import importlib
from typing import Any

import torch
from torch import nn

from ..config import Pooling
from ..errors import TransferError

OFFLINE_HINT = "if you are offline, use model=minilm (packaged, works offline) or set model.name_or_path to a local folder"


def resolve_path(model: Any) -> str:
    """Where to load from: the pip package that ships the model when it is installed, else the hub id or folder."""
    if model.package:
        try:
            return str(importlib.import_module(model.package).get_model_path())
        except ImportError:
            pass
    if not model.name_or_path:
        raise TransferError(f"model '{model.name}' sets neither package nor name_or_path")
    return model.name_or_path


def _load(what: str, loader, path: str, model: Any):
    try:
        return loader(path)
    except (OSError, ValueError) as e:
        reason = str(e).splitlines()[0]
        raise TransferError(f"could not load the {what} of model '{model.name}' from '{path}' ({reason}); {OFFLINE_HINT}") from None


def load_tokenizer(model: Any):
    from transformers import AutoTokenizer

    return _load("tokenizer", AutoTokenizer.from_pretrained, resolve_path(model), model)


def load_backbone_config(model: Any):
    """The backbone's transformers config (no weights): enough to check limits before any data loads."""
    from transformers import AutoConfig, BertConfig

    if model.random_init is not None:
        return BertConfig(**model.random_init)
    return _load("config", AutoConfig.from_pretrained, resolve_path(model), model)


def max_positions(config) -> int:
    """The longest input the backbone accepts; RoBERTa-style models reserve padding_idx + 1 positions."""
    limit = getattr(config, "max_position_embeddings", 512)
    if getattr(config, "model_type", "") in ("roberta", "xlm-roberta", "camembert"):
        limit -= (config.pad_token_id or 0) + 1
    return limit


class TransferModel(nn.Module):
    """backbone -> pooled features (`features`) -> logits (`head`)."""

    def __init__(self, backbone: nn.Module, num_labels: int, pooling: str = "mean", dropout: float = 0.1):
        super().__init__()
        self.backbone = backbone
        self.pooling = pooling
        self.feature_dim = backbone.config.hidden_size
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(self.feature_dim, num_labels))

    def features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **_: Any) -> torch.Tensor:
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        if self.pooling == "cls":
            return hidden[:, 0]
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **_: Any) -> torch.Tensor:
        return self.head(self.features(input_ids, attention_mask))


def build_model(model: Any, num_labels: int, vocab_size: int, config=None) -> TransferModel:
    """`config`: the backbone config when the caller has already loaded it (to check limits)."""
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own progress display is enough

    config = config or load_backbone_config(model)
    if model.random_init is not None:
        config.vocab_size = vocab_size
        backbone = AutoModel.from_config(config)
    else:
        backbone = _load("weights", AutoModel.from_pretrained, resolve_path(model), model)
    return TransferModel(backbone, num_labels, Pooling(model.pooling).value, model.dropout)
