"""A run's adapted classifier as a plain Hugging Face model folder: config.json (with id2label), model.safetensors and
the tokenizer; no pickle, and none of the strategy's own modules (discriminator, teacher, MLM head).

transformers has no class for "encoder, mean pooling, head" (its BERT classifier reads the [CLS] token through a tanh
pooler), so the folder names a small class of ours, `TransferForSequenceClassification`: the run's backbone (any
`AutoModel`; its config nested under `encoder`), its pooling and its head (linear, mlp or DANN's bottleneck). Importing
`transfer_cli.hf` registers the class with transformers' Auto classes, so the folder loads without
`trust_remote_code` (no code is read from it):

    import transfer_cli.hf
    from transformers import AutoModelForSequenceClassification, pipeline
    model = AutoModelForSequenceClassification.from_pretrained("exported/")
    classify = pipeline("text-classification", model="exported/")
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput

from ..errors import TransferError
from ..outputs import (ADAPTER_DIR, HEAD_FILE, REFERENCE_FILE, is_ensemble_folder, model_folder, read_json,
                       staged_folder, write_json)
from . import TransferModel, make_head, pool


class TransferClassifierConfig(PretrainedConfig):
    model_type = "transfer_classifier"

    def __init__(self, encoder: Optional[dict] = None, pooling: str = "mean", head: str = "linear",
                 head_width: int = 0, classifier_dropout: float = 0.1, **kwargs: Any):
        super().__init__(**kwargs)
        self.encoder = encoder or {}
        self.pooling = pooling
        self.head = head
        self.head_width = head_width
        self.classifier_dropout = classifier_dropout

    def encoder_config(self) -> PretrainedConfig:
        options = dict(self.encoder)
        return AutoConfig.for_model(options.pop("model_type"), **options)


class TransferForSequenceClassification(PreTrainedModel):
    """logits = head(pool(encoder(text))), as in training; the loss is cross-entropy when labels are given."""

    config_class = TransferClassifierConfig
    base_model_prefix = "backbone"

    def __init__(self, config: TransferClassifierConfig):
        super().__init__(config)
        encoder = config.encoder_config()
        self.backbone = AutoModel.from_config(encoder)
        self.head = make_head(encoder.hidden_size, config.num_labels, config.classifier_dropout, config.head,
                              config.head_width)
        self.post_init()

    def _init_weights(self, module) -> None:  # the backbone initialises itself, the head as torch does
        pass

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The pooled features the head reads."""
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return pool(hidden, attention_mask, self.config.pooling)

    def forward(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                labels: Optional[torch.Tensor] = None, **_: Any) -> SequenceClassifierOutput:
        # token_type_ids and the like are ignored, as in training (one text per input)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        logits = self.head(self.encode(input_ids, attention_mask))
        loss = F.cross_entropy(logits.float(), labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args: Any, **kwargs: Any):
        """Also an adapter export (`transfer export --adapters`), which holds no encoder weights: the base model loads
        from its hub id or package, the PEFT adapter merges into it, then the head loads."""
        folder = Path(str(pretrained_model_name_or_path))
        if not (folder / HEAD_FILE).exists():
            return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        from peft import PeftModel
        from safetensors.torch import load_file

        from . import load_backbone
        from ..config import ModelConfig

        model = cls(TransferClassifierConfig.from_pretrained(folder))
        base = ModelConfig(**model.config.adapter_base)
        model.backbone = load_backbone(base)
        model.backbone = PeftModel.from_pretrained(model.backbone, folder / ADAPTER_DIR).merge_and_unload()
        model.head.load_state_dict(load_file(folder / HEAD_FILE))
        return model.eval()


AutoConfig.register(TransferClassifierConfig.model_type, TransferClassifierConfig, exist_ok=True)
AutoModelForSequenceClassification.register(TransferClassifierConfig, TransferForSequenceClassification, exist_ok=True)


def to_pretrained(model: TransferModel, labels: List[str]) -> TransferForSequenceClassification:
    """The exportable copy of a trained model (fp32, on the CPU); PEFT adapters merged into the backbone's weights."""
    backbone = copy.deepcopy(model.backbone).float().cpu()
    if hasattr(backbone, "merge_and_unload"):
        try:
            backbone = backbone.merge_and_unload()
        except (AttributeError, NotImplementedError, ValueError) as e:
            raise TransferError(f"cannot merge this run's PEFT adapters into the backbone ({e}); "
                                "only LoRA and IA3 runs can be exported") from None
    head = model.head
    config = TransferClassifierConfig(
        encoder=backbone.config.to_diff_dict(), pooling=model.pooling, head=head.kind, head_width=head.width,
        classifier_dropout=head.dropout, id2label=dict(enumerate(labels)), label2id={l: i for i, l in enumerate(labels)},
        architectures=[TransferForSequenceClassification.__name__],
    )
    exported = TransferForSequenceClassification(config)
    exported.backbone.load_state_dict(backbone.state_dict())
    exported.head.load_state_dict(head.state_dict())
    return exported.eval()


def save_pretrained(model: TransferModel, tokenizer, labels: List[str], max_length: int, folder: Path,
                    reference: Optional[Dict[str, np.ndarray]] = None, base_model: Optional[dict] = None) -> None:
    """Write the model folder whole or not at all: into a temporary folder beside it, then renamed into place. The
    tokenizer keeps the run's max_length, so that predictions truncate texts as the run did. `reference`: the pooled
    features and class probabilities of unlabelled target texts, for the served model's drift monitor. A PEFT run also
    keeps its adapter in `adapter/`; `base_model` (the model group's name, name_or_path and package) says where its
    frozen weights come from, or is None when no folder or hub id holds them (random weights, init_from)."""
    from safetensors.numpy import save_file

    with staged_folder(folder) as staging:
        exported = to_pretrained(model, labels)
        if hasattr(model.backbone, "peft_config"):
            with warnings.catch_warnings():  # PEFT calls a transformers API deprecated in transformers 5
                warnings.simplefilter("ignore", FutureWarning)
                model.backbone.save_pretrained(staging / ADAPTER_DIR)
            exported.config.adapter_base = base_model
            if base_model and base_model["name_or_path"]:  # the hub id, not this machine's folder, for PEFT's loaders
                adapter_config = staging / ADAPTER_DIR / "adapter_config.json"
                write_json(adapter_config, {**read_json(adapter_config), "base_model_name_or_path": base_model["name_or_path"]})
        exported.save_pretrained(staging)
        tokenizer = copy.deepcopy(tokenizer)
        tokenizer.model_max_length = max_length
        tokenizer.save_pretrained(staging)
        if reference is not None:
            save_file({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in reference.items()},
                      str(staging / REFERENCE_FILE))


def load_adapted(model: TransferModel, path: Path, model_name: str) -> None:
    """Start from an adapted model: its encoder always, its head too where the label count and pooling match (a
    strategy with a head of its own, such as DANN's bottleneck, builds a fresh one). ONNX exports have no weights to
    start from."""
    folder = model_folder(path)
    if is_ensemble_folder(folder):
        raise TransferError(f"init_from={path} is an ensemble of several models; start from one of its members")
    if (folder / "model.onnx").exists():
        raise TransferError(f"init_from={path} is an ONNX export, with no weights to train; use the run folder or a "
                            "PyTorch export")
    saved = TransferForSequenceClassification.from_pretrained(folder)
    try:
        model.backbone.load_state_dict(saved.backbone.state_dict())
    except RuntimeError:
        raise TransferError(f"init_from={path} holds a {saved.config.encoder.get('model_type')} encoder that does not "
                            f"match model={model_name}; choose the model that run used") from None
    if saved.config.num_labels == model.num_labels and saved.config.head == "linear" and saved.config.pooling == model.pooling:
        model.head.load_state_dict(saved.head.state_dict())
