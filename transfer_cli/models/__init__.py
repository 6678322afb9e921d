"""The model: a pretrained backbone, pooling (cls or mean) into one feature vector, then a classification head.
Options for any strategy: freezing (embeddings, bottom layers, gradual unfreezing) and PEFT wrappers."""

from __future__ import annotations

import importlib
import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig, PeftConfig, PeftMethod, Pooling, group_options, load_option, run_config_dirs
from ..errors import TransferError
from ..losses import BottleneckHead

log = logging.getLogger("transfer")
OFFLINE_HINT = "if you are offline, use model=minilm (packaged, works offline) or set model.name_or_path to a local folder"


def resolve_path(model: Any) -> str:
    """Where to load from: the pip package that ships the model when it is installed, else the hub id or folder. A
    local folder in name_or_path always wins (model=minilm model.name_or_path=PATH is that folder, not the package)."""
    local = model.name_or_path and (model.name_or_path.startswith(("/", ".", "~")) or Path(model.name_or_path).exists())
    if local:
        folder = Path(model.name_or_path).expanduser()
        if not (folder / "config.json").exists():
            raise TransferError(f"model '{model.name}': {folder} is not a model folder ("
                                f"{'no config.json in it' if folder.is_dir() else 'it does not exist'}); set "
                                "model.name_or_path to a folder written by save_pretrained, or to a hub id")
        return str(folder)
    if model.package:
        try:
            return str(importlib.import_module(model.package).get_model_path())
        except ImportError:
            pass
    if not model.name_or_path:
        raise TransferError(f"model '{model.name}' sets neither package nor name_or_path")
    return model.name_or_path


def model_config(name: str, dirs: Optional[List[Path]] = None) -> ModelConfig:
    """A model option (`configs/model/NAME.yaml` in the run's config folders), else a hub id or local folder."""
    options = group_options("model", dirs or run_config_dirs())
    if name not in options:
        return ModelConfig(name=name, name_or_path=name)
    return load_option(options[name], ModelConfig)


def _load(what: str, loader, path: str, model: Any):
    """`loader(path)`. Code shipped with a hub model runs only where its model option sets trust_remote_code."""
    trust = bool(getattr(model, "trust_remote_code", False))
    if trust:
        log.warning("model '%s': trust_remote_code=true runs the Python code that comes with %s", model.name, path)
    try:
        return loader(path, trust_remote_code=trust)
    except (OSError, ValueError) as e:
        reason = str(e).splitlines()[0]
        raise TransferError(f"could not load the {what} of model '{model.name}' from '{path}' ({reason}); {OFFLINE_HINT}") from None


@contextmanager
def _transformers_quiet():
    """transformers' warnings off for the block: its load report is a table of every weight a checkpoint holds
    beyond the loaded class; what matters in it is logged by the caller in one line."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)


def full_precision(module: nn.Module, name: str) -> None:
    """fp32 weights, whatever the checkpoint stores: transformers 5 loads a checkpoint in its stored dtype, and
    AdamW on fp16 or bf16 weights rounds away updates below their precision. Autocast gives the speed."""
    stored = {p.dtype for p in module.parameters()} - {torch.float32}
    if stored:
        log.info("model '%s': its checkpoint stores %s weights; they train in float32", name,
                 ", ".join(sorted(str(dtype).removeprefix("torch.") for dtype in stored)))
        module.float()


def load_backbone(model: Any):
    """The pretrained encoder. The checkpoint's pretraining heads (BERT's `cls.*`) are left out; weights that the
    checkpoint lacks start random, which is a warning unless they are the pooler's, which no pooling here reads."""
    from functools import partial

    from transformers import AutoModel

    path = resolve_path(model)
    with _transformers_quiet():
        backbone, info = _load("weights", partial(AutoModel.from_pretrained, output_loading_info=True), path, model)
    full_precision(backbone, model.name)
    unused, fresh = sorted(info["unexpected_keys"]), sorted(info["missing_keys"])
    if unused:
        log.info("model '%s': %d weights of its checkpoint are not part of the encoder (%s, ...): its pretraining "
                 "heads", model.name, len(unused), unused[0])
    if [key for key in fresh if "pooler" not in key]:
        log.warning("model '%s': %d encoder weights are missing from %s and start random (%s, ...); is it the "
                    "checkpoint you meant?", model.name, len(fresh), path, fresh[0])
    elif fresh:
        log.info("model '%s': its checkpoint has no pooler weights (not used: pooling is cls or mean)", model.name)
    return backbone


def load_tokenizer(model: Any):
    from transformers import AutoTokenizer

    return _load("tokenizer", AutoTokenizer.from_pretrained, resolve_path(model), model)


def load_backbone_config(model: Any):
    """The backbone's transformers config (no weights): enough to check limits before any data loads."""
    from transformers import AutoConfig, BertConfig

    if model.random_init is not None:
        return BertConfig(**model.random_init)
    config = _load("config", AutoConfig.from_pretrained, resolve_path(model), model)
    if getattr(config, "is_encoder_decoder", False) or getattr(config, "vocab_size", None) is None:
        raise TransferError(f"model '{model.name}' ({resolve_path(model)}) is a {config.model_type} model, not a text "
                            "encoder that a classification head can sit on; choose one such as minilm, bert-base or "
                            "roberta-base")
    return config


class NoMaskedLMHead(TransferError):
    """The checkpoint has no pretrained masked-LM head (a sentence encoder, random weights)."""


def load_masked_lm_head(model: "TransferModel") -> nn.Module:
    """The pretrained masked-LM head of the checkpoint the backbone came from (BERT's `cls`, RoBERTa's `lm_head`),
    its decoder tied to the backbone's input embeddings as in the checkpoint. NoMaskedLMHead where it has none; a
    TransferError where it has one that cannot be used."""
    from transformers import AutoModelForMaskedLM

    path = model.backbone.config._name_or_path
    if not path:
        raise NoMaskedLMHead(f"model '{model.name}' has random weights")
    try:
        with _transformers_quiet():  # its report of missing weights: the error below says what matters
            mlm, info = AutoModelForMaskedLM.from_pretrained(path, output_loading_info=True)
    except (OSError, ValueError) as e:
        raise TransferError(f"model '{model.name}' does not load as a masked LM ({str(e).splitlines()[0]})") from None
    full_precision(mlm, model.name)
    missing = sorted(key for key in info["missing_keys"] if not key.startswith(mlm.base_model_prefix))
    if missing:
        raise NoMaskedLMHead(f"model '{model.name}' has none ({missing[0]} and {len(missing) - 1} more are missing "
                             "from its checkpoint)")
    heads = [module for module in mlm.children() if module is not mlm.base_model]
    if len(heads) != 1:
        raise TransferError(f"the masked-LM head of model '{model.name}' ({type(mlm).__name__}) is not one module")
    if mlm.config.tie_word_embeddings and mlm.get_output_embeddings() is not None:
        mlm.get_output_embeddings().weight = model.backbone.get_input_embeddings().weight
    return heads[0]


def max_positions(config) -> int:
    """The longest input the backbone accepts; RoBERTa-style models reserve padding_idx + 1 positions."""
    limit = getattr(config, "max_position_embeddings", 512)
    if getattr(config, "model_type", "") in ("roberta", "xlm-roberta", "camembert"):
        limit -= (config.pad_token_id or 0) + 1
    return limit


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """One vector per text: the first token's state (cls) or the mean over real tokens (mean)."""
    if pooling == "cls":
        return hidden[:, 0]
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)


class CosineHead(nn.Module):
    """logits = scale · cos(f, p_c): the cosine similarity of the features with one prototype per class (a
    sentence encoder's embedding of each class's description, in zero-shot classification). `scale` only sharpens
    the probabilities; it never changes which class wins."""

    def __init__(self, features: int, labels: int):
        super().__init__()
        self.prototypes = nn.Parameter(torch.zeros(labels, features))
        self.register_buffer("scale", torch.tensor(1.0))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        cosine = F.normalize(features, dim=-1) @ F.normalize(self.prototypes, dim=-1).to(features.dtype).T
        return self.scale * cosine


def make_head(features: int, labels: int, dropout: float, kind: str = "linear", width: int = 0) -> nn.Module:
    """The classification head: linear (dropout, linear), mlp (a hidden ReLU layer `width` wide), bottleneck
    (TLlib's, for DANN and CDAN: linear-BatchNorm-ReLU `width` wide, then linear) or cosine (zero-shot: similarity
    to class prototypes). The head remembers its kind and width, so that an export can rebuild it."""
    if kind == "cosine":
        head = CosineHead(features, labels)
    elif kind == "bottleneck":
        head = BottleneckHead(features, width, labels, dropout)
    elif kind == "mlp":
        head = nn.Sequential(nn.Dropout(dropout), nn.Linear(features, width), nn.ReLU(), nn.Dropout(dropout),
                             nn.Linear(width, labels))
    else:
        head = nn.Sequential(nn.Dropout(dropout), nn.Linear(features, labels))
    head.kind, head.width, head.dropout = kind, width, dropout
    return head


class TransferModel(nn.Module):
    """backbone -> pooled features (`features`) -> logits (`head`).

    `cached_features`, when set, replaces the backbone and pooling (feature extraction from cached encodings)."""

    def __init__(self, backbone: nn.Module, num_labels: int, pooling: str = "mean", dropout: float = 0.1,
                 name: str = ""):
        super().__init__()
        self.name = name  # the model option's, for messages
        self.backbone = backbone
        self.pooling = pooling
        self.feature_dim = backbone.config.hidden_size
        self.num_labels = num_labels
        self.head = make_head(self.feature_dim, num_labels, dropout)
        self.cached_features: Optional[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = None

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The backbone's pooled features, never from a cache."""
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return pool(hidden, attention_mask, self.pooling)

    def features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **_: Any) -> torch.Tensor:
        if self.cached_features is not None:
            return self.cached_features(input_ids, attention_mask)
        return self.encode(input_ids, attention_mask)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **_: Any) -> torch.Tensor:
        return self.head(self.features(input_ids, attention_mask))

    def layer_groups(self) -> List[nn.Module]:
        """The backbone bottom-up: the embeddings, then each transformer layer."""
        base = self.backbone
        n = base.config.num_hidden_layers
        layers = next((m for m in base.modules() if isinstance(m, nn.ModuleList) and len(m) == n), None)
        embeddings = getattr(base, "embeddings", None) or base.get_input_embeddings()
        if layers is None:
            raise TransferError(f"cannot find the {n} transformer layers of {type(base).__name__} to freeze them")
        return [embeddings, *layers]


def freeze(model: TransferModel, embeddings: bool, layers: int) -> None:
    groups = model.layer_groups()
    if layers > len(groups) - 1:
        raise TransferError(f"model.freeze_layers={layers} but the model has {len(groups) - 1} layers")
    for group in groups[int(not embeddings): layers + 1]:
        group.requires_grad_(False)


def gradual_unfreeze(model: TransferModel, epoch: int, trainable: List[nn.Parameter]) -> None:
    """ULMFiT (Howard & Ruder 2018): in epoch e of a phase the head and the top e-1 layer groups train. Only
    parameters in `trainable` (what the phase trains at all) are ever switched back on."""
    allowed = {id(p) for p in trainable}
    groups = model.layer_groups()
    for depth, group in enumerate(reversed(groups), start=1):
        for p in group.parameters():
            p.requires_grad_(depth < epoch and id(p) in allowed)


def apply_peft(backbone: nn.Module, peft: PeftConfig) -> nn.Module:
    """Wrap the backbone with PEFT: its own weights freeze, only the adapter's train."""
    import peft as peft_lib

    classes = {PeftMethod.lora: peft_lib.LoraConfig, PeftMethod.ia3: peft_lib.IA3Config,
               PeftMethod.prefix_tuning: peft_lib.PrefixTuningConfig}
    options = dict(peft.options)
    if peft.method == PeftMethod.prefix_tuning:
        options.setdefault("task_type", peft_lib.TaskType.FEATURE_EXTRACTION)
    try:
        config = classes[peft.method](**options)
        return peft_lib.get_peft_model(backbone, config)
    except (TypeError, ValueError) as e:
        raise TransferError(f"peft={peft.name}: {str(e).splitlines()[0]}; check peft.options") from None


def build_model(model: Any, num_labels: int, vocab_size: int, config=None, peft: Optional[PeftConfig] = None,
                init_from: Optional[Path] = None) -> TransferModel:
    """`config`: the backbone config when the caller has already loaded it (to check limits). `init_from`: a saved
    or exported model folder whose weights replace the pretrained ones (transfer again from an adapted model)."""
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own progress display is enough

    config = config or load_backbone_config(model)
    if model.random_init is not None:
        config.vocab_size = vocab_size
        backbone = AutoModel.from_config(config)
    else:
        backbone = load_backbone(model)
    result = TransferModel(backbone, num_labels, Pooling(model.pooling).value, model.dropout, model.name)
    if init_from is not None:
        from .exported import load_adapted

        load_adapted(result, init_from, model.name)
    if model.freeze_embeddings or model.freeze_layers:
        freeze(result, model.freeze_embeddings, model.freeze_layers)
    if peft is not None and peft.method != PeftMethod.none:
        result.backbone = apply_peft(backbone, peft)
    return result
