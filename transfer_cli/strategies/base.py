"""The strategy contract.

The loop owns everything generic (batching, optimiser, schedule, precision, accumulation, evaluation, selection).
A strategy owns what makes it different:
- `Params`: its hyperparameters, validated from its YAML;
- its extra modules (created in `__init__`, trained with the model);
- `phases()`: what each training phase trains on (default: labelled source, plus unlabelled target if it adapts).
  It may be a generator: the next phase is built after the previous one trained (self-training's pseudo-labels).
  A phase of 0 epochs trains nothing: the model is scored as it is (zero-shot);
- `start_phase()`: which parameters train in a phase (default: all that are not frozen);
- `loss()`: the per-step loss from a batch of the phase's training set and, when the phase has one, a batch of
  unlabelled target text. A phase may name another method as its loss (`Phase.loss`);
- `Group`s: parameters with optimiser settings of their own (a discriminator's learning rate, update ratio or gate,
  clipping, weight clamp), declared per phase. The loop applies them for any strategy.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data import RunData
from ..data.batching import TokenizedSet
from ..errors import TransferError
from ..models import TransferModel
from ..evaluate import infer

Logs = Dict[str, float]


def check(ok: bool, message: str) -> None:
    """For `Params.__post_init__`: a parameter out of range is a user error."""
    if not ok:
        raise TransferError(message)


@dataclass
class Group:
    """Parameters (those of `modules` that train in the phase) with their own optimiser settings. Unset values take
    the run's (`train.lr`, `train.weight_decay`, `train.max_grad_norm`). All groups share one backward pass and
    one AdamW, in torch param groups of their own, so each has its own learning rate, betas, decay, schedule and
    moments.

    `every`: the group updates on every n-th optimiser step only (n discriminator updates per encoder update).
    `gate`: the group updates only on steps whose logs pass it (e.g. "the discriminator is right > 60%"); with
    gradient accumulation, the logs averaged over the accumulated batches.
    `clamp`: after each update, its weights are clamped to [-clamp, clamp] (WGAN-style weight clipping)."""

    name: str
    modules: Sequence[nn.Module]
    lr: Optional[float] = None
    weight_decay: Optional[float] = None
    betas: Tuple[float, float] = (0.9, 0.999)
    schedule: str = "warmup_linear"  # or constant
    max_grad_norm: Optional[float] = None  # 0: no clipping
    every: int = 1
    gate: Optional[Callable[[Logs], bool]] = None
    clamp: Optional[float] = None

    def updates(self, step: int, logs: Logs) -> bool:
        """Whether the group takes optimiser step number `step` (1-based), given that step's logs."""
        return step % self.every == 0 and (self.gate is None or self.gate(logs))


@dataclass
class Sharpness:
    """A loss term made sharpness-aware (SAM, Foret et al. 2021). Each batch, the loop first takes `loss(batch)` (the
    labelled batch) and its gradient g over the trainable weights w of `modules`, moves them to w + ρ·g/‖g‖, the
    worst nearby point of that term to first order, computes the phase's loss and its backward there, then puts w
    back before the update. The update so follows the phase's gradient at the perturbed point, which seeks flat
    minima of the term. BatchNorm statistics do not move in the first pass."""

    rho: float
    loss: Callable[[dict], torch.Tensor]
    modules: Sequence[nn.Module]


@dataclass
class Phase:
    """One stage of training.

    `train` is the set the epoch runs over (labelled, except in self-supervised phases such as MLM). With `epochs`
    0 nothing trains: the loop scores the model once, and `selection` says how its state was reached (none).
    `selection` picks the phase's checkpoint: None for the run's label-free validator (`selection=...`, default
    source-validation accuracy), target_val (oracle runs only), or last (no held-out data, e.g. k-shot fine-tuning).
    `model` is the model the phase evaluates (default: the strategy's model; a teacher, while it trains).
    `batch_by` gives each training example a group (its source domain): batches never mix groups.
    `loss` is the phase's loss (default: the strategy's `loss`); `groups` its parameters with their own optimiser
    settings (the rest train with the run's); `batch_size` its own (default: the run's, train.batch_size).
    `frozen` modules do not train in the phase (what of them trained before trains again after it).
    `group_by_length: False` makes the phase's batches plain random ones whatever train.group_by_length says (where
    a batch must mix examples, such as in-batch pairs of a repeated few-shot set).
    `average_from`: past this share of the phase's optimiser steps, the weights the phase evaluates, selects and
    keeps are the running mean of every step's weights (SWA; training/averaging.py); None: the live weights.
    `sharpness`: a term whose flat minima the phase seeks (`Sharpness`; training/sharpness.py); None: plain steps."""

    name: str
    train: TokenizedSet
    epochs: int
    unlabelled: Optional[TokenizedSet] = None
    selection: Optional[str] = None
    val: Optional[TokenizedSet] = None
    lr: Optional[float] = None
    model: Optional[TransferModel] = None
    batch_by: Optional[np.ndarray] = None
    loss: Optional[Callable[..., Tuple[torch.Tensor, Logs]]] = None
    groups: Sequence[Group] = ()
    batch_size: Optional[int] = None
    group_by_length: bool = True
    frozen: Sequence[nn.Module] = ()
    average_from: Optional[float] = None
    sharpness: Optional[Sharpness] = None


@dataclass
class Context:
    """What `phases()` may need from the run: the schedule, the seed, the cache, and inference on the run's device."""

    epochs: int
    seed: int
    cache_dir: Path
    accelerator: Any
    tokenizer: Any
    eval_batch_size: int
    lr: float = 5e-5  # the run's learning rate (train.lr), for groups that scale it

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id

    def probabilities(self, model: TransferModel, data: TokenizedSet) -> torch.Tensor:
        model.eval()
        return infer(model, data, self.eval_batch_size, self.pad_id, self.accelerator).softmax(-1)

    def features(self, model: TransferModel, data: TokenizedSet) -> torch.Tensor:
        """The backbone's pooled features (never from a feature cache)."""
        model.eval()
        return infer(model.encode, data, self.eval_batch_size, self.pad_id, self.accelerator)

    def embed(self, model: TransferModel, texts: List[str]) -> torch.Tensor:
        """The pooled features of texts that are not in the run's data (class descriptions, prompts)."""
        ids = self.tokenizer(list(texts), truncation=True)["input_ids"]
        return self.features(model, TokenizedSet([np.asarray(i, dtype=np.int64) for i in ids]))


class Strategy(nn.Module):
    name = "base"
    target_labels = "none"  # which target labels it uses: none | few | all
    oracle = False  # trained or selected with target labels: an upper bound, not a transfer result
    adapts = False  # draws unlabelled target batches alongside the labelled ones
    source_labels = True  # trains on the labelled source (zero-shot and target-only methods do not)

    @dataclass
    class Params:
        pass

    def __init__(self, params, model: TransferModel):
        super().__init__()
        self.params = params
        self.model = model
        self.phase = ""
        self._phase_loss = None
        self._frozen: List[nn.Module] = []
        self._held: List[nn.Parameter] = []  # what the current phase keeps from training

    def freeze(self, module: nn.Module) -> None:
        """A frozen model (a teacher, a source encoder): no gradients, and always in eval mode (no dropout)."""
        set_trainable(module, False)
        self._frozen.append(module.eval())

    def train(self, mode: bool = True):
        super().train(mode)
        for module in self._frozen:
            module.eval()
        return self

    def phases(self, data: RunData, ctx: Context) -> Iterable[Phase]:
        return [Phase("train", data.source_train, ctx.epochs, unlabelled=data.target_pool if self.adapts else None)]

    def start_phase(self, phase: Phase) -> None:
        """Called before a phase's optimiser is built: the phase's loss, and its `frozen` modules held back."""
        self.phase, self._phase_loss = phase.name, phase.loss
        for p in self._held:
            p.requires_grad_(True)
        self._held = [p for module in phase.frozen for p in module.parameters() if p.requires_grad]
        for p in self._held:
            p.requires_grad_(False)

    def task_loss(self, batch: dict, model: Optional[TransferModel] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """Cross-entropy on a labelled batch, and the pooled features it came from."""
        model = model or self.model
        features = model.features(**batch)
        return F.cross_entropy(model.head(features).float(), batch["labels"]), features

    def loss(self, labelled: dict, unlabelled: Optional[dict], progress: float) -> Tuple[torch.Tensor, Logs]:
        """The loss of one step and the terms to log; `progress` runs from 0 to 1 over the phase (for schedules such
        as DANN's λ)."""
        loss, _ = self.task_loss(labelled)
        return loss, {}

    def forward(self, labelled: dict, unlabelled: Optional[dict], progress: float) -> Tuple[torch.Tensor, Logs]:
        """The current phase's loss (the loop calls the strategy, so that DDP sees one module)."""
        return (self._phase_loss or self.loss)(labelled, unlabelled, progress)


def set_trainable(module: nn.Module, trainable: bool) -> None:
    for p in module.parameters():
        p.requires_grad_(trainable)
