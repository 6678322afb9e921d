"""The one training loop, shared by every strategy: phases -> epochs -> steps, evaluation and the label-free
validators every epoch, checkpoint selection and early stopping on the phase's selection signal."""

from __future__ import annotations

import itertools
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ..data import RunData
from ..errors import TransferError
from ..data.batching import TokenizedSet, train_loader
from ..models import gradual_unfreeze
from ..strategies import Context, Phase, Strategy
from . import validators
from .evaluate import classification_scores, predict

log = logging.getLogger(__name__)


@dataclass
class FitResult:
    history: List[Dict[str, Any]] = field(default_factory=list)
    final: Dict[str, Any] = field(default_factory=dict)  # the selected epoch's row of the last phase
    train_seconds: float = 0.0
    train_samples: int = 0
    eval_seconds: float = 0.0
    eval_samples: int = 0


def _optimizer(strategy: Strategy, train: Any, phase_lr: Optional[float]) -> torch.optim.Optimizer:
    """AdamW; no weight decay on biases and norms. A phase's own lr applies to everything; otherwise the head and
    the strategy's own modules use head_lr (default lr)."""
    groups: Dict[tuple, List[torch.nn.Parameter]] = {}
    for name, p in strategy.named_parameters():
        if not p.requires_grad:
            continue
        decay = 0.0 if p.ndim < 2 else train.weight_decay
        backbone = ".backbone." in f".{name}"  # the model's, a teacher's, a frozen copy's
        group_lr = phase_lr or (train.lr if backbone else train.head_lr or train.lr)
        groups.setdefault((decay, group_lr), []).append(p)
    return torch.optim.AdamW([{"params": ps, "weight_decay": d, "lr": glr} for (d, glr), ps in groups.items()])


def _warmup_then_linear_decay(optimizer, warmup: int, total: int):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (total - step) / max(1, total - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _progress_bar(disable: bool) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TimeRemainingColumn(), TextColumn("loss {task.fields[loss]:.4f}"), transient=False, disable=disable,
    )


def fit(strategy: Strategy, data: RunData, cfg: Any, accelerator, tokenizer, progress_bar: bool = True) -> FitResult:
    """Train through the strategy's phases; each phase ends with its selected checkpoint restored.
    Without `progress_bar` (parallel jobs sharing one terminal), the epoch log lines show the progress."""
    result = FitResult()
    ctx = Context(cfg.train.epochs, cfg.seed, Path(cfg.paths.cache_dir).expanduser(), accelerator, tokenizer,
                  cfg.train.eval_batch_size)
    # the prepared module (device, autocast, DDP when distributed) computes the loss; the plain one is for the rest
    step = accelerator.prepare_model(strategy)
    with _progress_bar(disable=not progress_bar) as bar:
        for number, phase in enumerate(strategy.phases(data, ctx)):
            if len(phase.train) == 0:
                raise TransferError(f"phase '{phase.name}' has no examples to train on; use more data")
            strategy.start_phase(phase)
            result.final = _fit_phase(strategy, step, phase, number, data, ctx, cfg, bar, result)
    return result


def _predict(model, data: TokenizedSet, ctx: Context, result: FitResult):
    start = time.perf_counter()
    features, logits = predict(model, data, ctx.eval_batch_size, ctx.pad_id, ctx.accelerator)
    result.eval_seconds += time.perf_counter() - start
    result.eval_samples += len(data)
    return features, logits


def _score_epoch(model, data: RunData, phase: Phase, ctx: Context, result: FitResult) -> Dict[str, float]:
    """Source-validation scores, the label-free validators, target-test scores (for analysis: they never select)
    and, in oracle phases, target-validation scores."""
    source_features, source_logits = _predict(model, data.source_val, ctx, result)
    target_features, target_logits = _predict(model, data.target_validation, ctx, result)
    _, test_logits = _predict(model, data.target_test, ctx, result)
    row = {f"source_val_{k}": v for k, v in classification_scores(source_logits, data.source_val.labels).items()}
    row.update({f"target_test_{k}": v for k, v in classification_scores(test_logits, data.target_test.labels).items()})
    row.update(validators.validate(source_logits, source_features, data.source_val.labels, target_logits,
                                   target_features, ctx.seed))
    if phase.val is not None:
        _, val_logits = _predict(model, phase.val, ctx, result)
        row.update({f"target_val_{k}": v for k, v in classification_scores(val_logits, phase.val.labels).items()})
    return row


def _selection_score(criterion: str, row: Dict[str, float], epoch: int) -> float:
    """Higher is better: a label-free validator, target-validation accuracy (oracle phases), or the epoch (last)."""
    if criterion == "last":
        return epoch
    if criterion == "target_val":
        return row["target_val_accuracy"]
    return validators.score(criterion, row)


def _fit_phase(strategy, step_fn, phase: Phase, number: int, data: RunData, ctx: Context, cfg, bar, result: FitResult):
    train, accelerator, pad_id = cfg.train, ctx.accelerator, ctx.pad_id
    model = phase.model or strategy.model
    loader = train_loader(phase.train, train.batch_size, cfg.seed + number, pad_id, train.group_by_length, phase.batch_by)
    steps_per_epoch = math.ceil(len(loader) / train.grad_accum_steps)
    total_steps = steps_per_epoch * phase.epochs
    optimizer = accelerator.prepare_optimizer(_optimizer(strategy, train, phase.lr))
    trainable = [p for p in model.parameters() if p.requires_grad]
    scheduler = _warmup_then_linear_decay(optimizer, int(train.warmup_ratio * total_steps), total_steps)
    unlabelled = None
    if phase.unlabelled is not None:
        unlabelled = itertools.chain.from_iterable(
            itertools.repeat(train_loader(phase.unlabelled, train.batch_size, cfg.seed + 1000 + number, pad_id,
                                          train.group_by_length))
        )
    to_device = lambda b: {k: v.to(accelerator.device) for k, v in b.items()}  # noqa: E731

    best_score, best_state, best_row, stale = -math.inf, None, None, 0
    step = 0
    for epoch in range(1, phase.epochs + 1):
        task = bar.add_task(f"{phase.name} {epoch}/{phase.epochs}", total=len(loader), loss=float("nan"))
        if cfg.model.gradual_unfreezing:
            gradual_unfreeze(model, epoch, trainable)
        strategy.train()
        start, losses, logs_sum = time.perf_counter(), [], {}
        for i, batch in enumerate(loader):
            progress = step / max(1, total_steps)
            with accelerator.autocast():
                loss, logs = step_fn(to_device(batch), to_device(next(unlabelled)) if unlabelled else None, progress)
            group_start = i - i % train.grad_accum_steps  # the last group of an epoch may be shorter
            accelerator.backward(loss / min(train.grad_accum_steps, len(loader) - group_start))
            if (i + 1) % train.grad_accum_steps == 0 or i + 1 == len(loader):
                if train.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(strategy.parameters(), train.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
            losses.append(loss.item())
            for k, v in logs.items():
                logs_sum[k] = logs_sum.get(k, 0.0) + v
            bar.update(task, advance=1, loss=sum(losses[-20:]) / len(losses[-20:]))
        result.train_seconds += time.perf_counter() - start
        result.train_samples += len(phase.train)

        strategy.eval()
        row = {"phase": phase.name, "epoch": epoch, "train_loss": sum(losses) / len(losses),
               "lr": scheduler.get_last_lr()[0], **{k: v / len(losses) for k, v in logs_sum.items()}}
        row.update(_score_epoch(model, data, phase, ctx, result))
        criterion = phase.selection or cfg.selection.value
        score = _selection_score(criterion, row, epoch)
        row.update(selection=criterion, selection_score=score)
        result.history.append(row)
        log.info(
            "%s epoch %d/%d: loss %.4f, source val acc %.4f, target test acc %.4f, %s score %.4f",
            phase.name, epoch, phase.epochs, row["train_loss"], row["source_val_accuracy"], row["target_test_accuracy"],
            criterion, score,
        )
        if best_row is None or score > best_score:
            best_score, best_row, stale = score, row, 0
            if epoch < phase.epochs:  # the last epoch's weights are already in place
                best_state = {k: v.detach().to("cpu", copy=True) for k, v in strategy.state_dict().items()}
            else:
                best_state = None
        else:
            stale += 1
            if stale >= train.patience:
                log.info("%s: early stop after epoch %d (no gain in %s for %d epochs)", phase.name, epoch, criterion, stale)
                break
    if best_state is not None:
        strategy.load_state_dict(best_state)
    for p in trainable:  # gradual unfreezing ends with everything the phase trained unfrozen
        p.requires_grad_(True)
    best_row["selected"] = True
    return best_row
