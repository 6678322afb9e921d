"""The one training loop, shared by every strategy: phases -> epochs -> steps, evaluation and the label-free
validators every epoch, checkpoint selection and early stopping on the phase's selection signal."""

from __future__ import annotations

import itertools
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ..data import RunData
from ..errors import TransferError
from ..data.batching import TokenizedSet, train_loader
from ..models import gradual_unfreeze
from ..strategies import Context, Phase, Strategy
from . import validators
from .checkpoint import Checkpoints
from .evaluate import classification_scores, predict
from .signals import StopSignals

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


@dataclass
class PhaseState:
    """Where a phase is: what a checkpoint saves and a resumed run continues from."""

    epoch: int = 0  # epochs completed
    batch: int = 0  # batches of the current epoch done (a checkpoint taken mid-epoch, on a signal)
    step: int = 0  # optimiser steps
    drawn: int = 0  # unlabelled batches drawn
    losses: List[float] = field(default_factory=list)  # the current epoch's, so far
    logs_sum: Dict[str, float] = field(default_factory=dict)
    best_score: float = -math.inf
    best_row: Optional[Dict[str, Any]] = None
    stale: int = 0
    done: bool = False


def fit(strategy: Strategy, data: RunData, cfg: Any, accelerator, tokenizer, progress_bar: bool = True,
        checkpoints: Optional[Checkpoints] = None, stop: Optional[StopSignals] = None,
        on_epoch: Optional[Callable[[List[Dict[str, Any]]], None]] = None) -> FitResult:
    """Train through the strategy's phases; each phase ends with its selected checkpoint restored.
    With `checkpoints`, every epoch (and a stop signal) saves one, and a saved one is resumed from. `on_epoch` gets
    the history after each epoch. Without `progress_bar` (parallel jobs sharing one terminal), the epoch log lines
    show the progress."""
    result = FitResult()
    ctx = Context(cfg.train.epochs, cfg.seed, Path(cfg.paths.cache_dir).expanduser(), accelerator, tokenizer,
                  cfg.train.eval_batch_size)
    saved = checkpoints.position() if checkpoints is not None else None
    if saved:
        result = FitResult(**saved["result"])
        log.info("resuming from %s: phase %d, epoch %d, batch %d", checkpoints.path, saved["phase"] + 1,
                 saved["state"]["epoch"], saved["state"]["batch"])
    run = _Run(strategy, data, cfg, ctx, result, checkpoints, stop or StopSignals(), on_epoch)
    with _progress_bar(disable=not progress_bar) as run.bar:
        for number, phase in enumerate(strategy.phases(data, ctx)):
            if len(phase.train) == 0:
                raise TransferError(f"phase '{phase.name}' has no examples to train on; use more data")
            strategy.start_phase(phase)
            if saved and number < saved["phase"]:  # trained before the interruption: its end state, as it was
                checkpoints.restore_phase_end(number, strategy)
                continue
            resuming = saved is not None and number == saved["phase"]
            state = PhaseState(**saved["state"]) if resuming else PhaseState()
            result.final = run.phase(phase, number, state, resume=resuming)
            if checkpoints is not None:
                checkpoints.save_phase_end(number, strategy)
    return result


class _Unlabelled:
    """Unlabelled batches without end (pass after pass, each reshuffled), resumable at any count. Sharded over the
    processes like the labelled loader, but not a prepared loader: one that never ends must stay out of
    Accelerate's end-of-dataloader bookkeeping, which times the accumulation and the metrics gathering."""

    def __init__(self, data: TokenizedSet, seed: int, cfg, ctx: Context, drawn: int):
        from accelerate.data_loader import BatchSamplerShard

        loader = train_loader(data, cfg.train.batch_size, seed, ctx.pad_id, cfg.train.group_by_length)
        self.sampler, self.collate, self.device = loader.batch_sampler, loader.collate_fn, ctx.accelerator.device
        self.shard = BatchSamplerShard(self.sampler, ctx.accelerator.num_processes, ctx.accelerator.process_index)
        self.drawn, self._batches = drawn, None

    def __next__(self) -> dict:
        per_pass = len(self.shard)
        if self._batches is None or self.drawn % per_pass == 0:
            passes, offset = divmod(self.drawn, per_pass)
            self.sampler.set_epoch(passes)
            self._batches = itertools.islice(iter(self.shard), offset, None)
        self.drawn += 1
        return {k: v.to(self.device) for k, v in self.collate(next(self._batches)).items()}


class _Run:
    def __init__(self, strategy, data, cfg, ctx, result, checkpoints, stop, on_epoch):
        self.strategy, self.data, self.cfg, self.ctx, self.result = strategy, data, cfg, ctx, result
        self.checkpoints, self.stop, self.on_epoch, self.bar = checkpoints, stop, on_epoch, None
        # The module that computes the loss: on the device, with autocast, and under DDP with several processes.
        # Wrapped once, before any phase, over every parameter that trains in some phase (modules that a phase
        # creates later, such as ADDA's frozen source encoder, do not train).
        self.step_fn = ctx.accelerator.prepare_model(strategy)

    def phase(self, phase: Phase, number: int, state: PhaseState, resume: bool) -> Dict[str, Any]:
        strategy, cfg, accelerator, result = self.strategy, self.cfg, self.ctx.accelerator, self.result
        train = cfg.train
        model = phase.model or strategy.model
        loader = train_loader(phase.train, train.batch_size, cfg.seed + number, self.ctx.pad_id,
                              train.group_by_length, phase.batch_by)
        sampler, loader = loader.batch_sampler, accelerator.prepare_data_loader(loader, device_placement=True)
        accelerator.gradient_accumulation_steps = train.grad_accum_steps
        total_steps = math.ceil(len(loader) / train.grad_accum_steps) * phase.epochs
        optimizer = accelerator.prepare_optimizer(_optimizer(strategy, train, phase.lr))
        scheduler = accelerator.prepare_scheduler(
            _warmup_then_linear_decay(optimizer, int(train.warmup_ratio * total_steps), total_steps))
        trainable = [p for p in model.parameters() if p.requires_grad]
        best_state = self.checkpoints.restore(strategy, optimizer, scheduler) if resume else None
        log.info("phase '%s': %d epochs of %d batches; global batch %d = %d per process x %d processes x %d "
                 "accumulation steps", phase.name, phase.epochs, len(loader),
                 train.batch_size * accelerator.num_processes * train.grad_accum_steps, train.batch_size,
                 accelerator.num_processes, train.grad_accum_steps)
        unlabelled = None
        if phase.unlabelled is not None:
            unlabelled = _Unlabelled(phase.unlabelled, cfg.seed + 1000 + number, cfg, self.ctx, state.drawn)

        with self.stop.deferred():  # a stop signal waits for the end of a batch, or of an epoch's evaluation
            for epoch in range(state.epoch + 1, phase.epochs + 1):
                if state.done:
                    break
                task = self.bar.add_task(f"{phase.name} {epoch}/{phase.epochs}", total=len(loader), loss=float("nan"),
                                         completed=state.batch)
                if cfg.model.gradual_unfreezing:
                    gradual_unfreeze(model, epoch, trainable)
                strategy.train()
                loader.set_epoch(epoch - 1)
                batches = accelerator.skip_first_batches(loader, state.batch) if state.batch else loader
                sampler.set_epoch(epoch - 1)  # also where a skipping loader cannot reach it
                accelerator.step = state.batch % train.grad_accum_steps  # the accumulation's count, when resumed
                start = time.perf_counter()
                for batch in batches:
                    self._step(batch, unlabelled, state, optimizer, scheduler, total_steps)
                    self.bar.update(task, advance=1, loss=sum(state.losses[-20:]) / len(state.losses[-20:]))
                    signum = self.stop.pending(accelerator)
                    if signum:
                        result.train_seconds += time.perf_counter() - start
                        start = time.perf_counter()
                        self._checkpoint(number, state, strategy, optimizer, scheduler, best_state)
                        self.stop.stop(signum, checkpointed=self.checkpoints is not None)
                result.train_seconds += time.perf_counter() - start
                result.train_samples += len(phase.train)

                strategy.eval()
                row = {"phase": phase.name, "epoch": epoch, "train_loss": sum(state.losses) / len(state.losses),
                       "lr": scheduler.get_last_lr()[0], **{k: v / len(state.losses) for k, v in state.logs_sum.items()}}
                row.update(_score_epoch(model, self.data, phase, self.ctx, result))
                criterion = phase.selection or cfg.selection.value
                score = _selection_score(criterion, row, epoch)
                row.update(selection=criterion, selection_score=score)
                result.history.append(row)
                accelerator.log({k: v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)},
                                step=len(result.history))
                log.info(
                    "%s epoch %d/%d: loss %.4f, source val acc %.4f, target test acc %.4f, %s score %.4f",
                    phase.name, epoch, phase.epochs, row["train_loss"], row["source_val_accuracy"],
                    row["target_test_accuracy"], criterion, score,
                )
                state.epoch, state.batch, state.losses, state.logs_sum = epoch, 0, [], {}
                if state.best_row is None or score > state.best_score:
                    state.best_score, state.best_row, state.stale = score, row, 0
                    # a copy, unless these are the phase's last weights anyway
                    best_state = None if epoch == phase.epochs else {
                        k: v.detach().to("cpu", copy=True) for k, v in strategy.state_dict().items()}
                else:
                    state.stale += 1
                    if state.stale >= train.patience:
                        log.info("%s: early stop after epoch %d (no gain in %s for %d epochs)", phase.name, epoch,
                                 criterion, state.stale)
                        state.done = True
                state.done = state.done or epoch == phase.epochs
                self._checkpoint(number, state, strategy, optimizer, scheduler, best_state)
                if self.on_epoch is not None and accelerator.is_main_process:
                    self.on_epoch(result.history)
                signum = self.stop.pending(accelerator)  # a signal during the evaluation waited for the checkpoint
                if signum:
                    self.stop.stop(signum, checkpointed=self.checkpoints is not None)
        if best_state is not None:
            strategy.load_state_dict(best_state)
        for p in trainable:  # gradual unfreezing ends with everything the phase trained unfrozen
            p.requires_grad_(True)
        state.best_row["selected"] = True
        return state.best_row

    def _step(self, batch: dict, unlabelled: Optional[_Unlabelled], state: PhaseState, optimizer, scheduler,
              total_steps: int) -> None:
        """One batch: the strategy's loss, backward; an update (clipped) at the end of each accumulation."""
        accelerator, train = self.ctx.accelerator, self.cfg.train
        with accelerator.accumulate(self.step_fn):
            with accelerator.autocast():
                loss, logs = self.step_fn(batch, next(unlabelled) if unlabelled else None, state.step / max(1, total_steps))
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                if train.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(self.strategy.parameters(), train.max_grad_norm)
                state.step += 1
            optimizer.step()  # Accelerate's optimiser steps only at the end of an accumulation
            if accelerator.sync_gradients:
                scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        state.batch += 1
        state.drawn = unlabelled.drawn if unlabelled else 0
        state.losses.append(loss.item())
        for k, v in logs.items():
            state.logs_sum[k] = state.logs_sum.get(k, 0.0) + v

    def _checkpoint(self, number: int, state: PhaseState, strategy, optimizer, scheduler, best_state) -> None:
        if self.checkpoints is None:
            return
        position = {"phase": number, "state": asdict(state), "result": asdict(self.result)}
        self.checkpoints.save(position, strategy, optimizer, scheduler, best_state)
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
