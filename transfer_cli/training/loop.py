"""The one training loop, shared by every strategy: phases -> epochs -> steps, evaluation and the label-free
validators every epoch, checkpoint selection and early stopping on the phase's selection signal."""

from __future__ import annotations

import logging
import math
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ..data import RunData
from ..errors import TransferError
from ..data.batching import Collate, TokenizedSet, train_loader
from ..models import gradual_unfreeze
from ..strategies import Context, Group, Phase, Strategy
from . import validators
from .averaging import WeightAverage
from .checkpoint import Checkpoints
from .sharpness import ascended
from ..evaluate import classification_scores, predict
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


def _optimizer(strategy: Strategy, train: Any, phase: Phase):
    """One AdamW over everything that trains in the phase, with a torch param group per (Group, decay) pair: no
    weight decay on biases and norms. Parameters in none of the phase's `groups` train with the run's settings: a
    phase's own lr applies to all of them; otherwise the head and the strategy's own modules use head_lr (default
    lr). Returns the optimiser and the Group behind each of its param groups."""
    default = Group("default", (), max_grad_norm=train.max_grad_norm)
    owner: Dict[int, Group] = {}
    for g in phase.groups:
        for p in (p for m in g.modules for p in m.parameters()):
            if owner.setdefault(id(p), g) is not g:
                raise ValueError(f"a parameter is in two groups of phase '{phase.name}': {owner[id(p)].name}, {g.name}")
    groups: Dict[tuple, List[torch.nn.Parameter]] = {}
    for name, p in strategy.named_parameters():
        if not p.requires_grad:
            continue
        group = owner.get(id(p), default)
        no_decay = p.ndim < 2
        if group is default:
            backbone = ".backbone." in f".{name}"  # the model's, a teacher's, a frozen copy's
            lr = phase.lr or (train.lr if backbone else train.head_lr or train.lr)
            decay = 0.0 if no_decay else train.weight_decay
        else:
            lr = group.lr or train.lr
            decay = 0.0 if no_decay else (train.weight_decay if group.weight_decay is None else group.weight_decay)
        groups.setdefault((id(group), decay, lr), (group, []))[1].append(p)
    optimizer = torch.optim.AdamW([{"params": ps, "weight_decay": decay, "lr": lr, "betas": group.betas}
                                   for (_, decay, lr), (group, ps) in groups.items()])
    return optimizer, [group for group, _ in groups.values()]


def _scheduler(optimizer, owners: List[Group], warmup: int, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Each param group's schedule: linear warmup then linear decay to 0 at `total` steps, or constant. A plain
    scheduler, stepped once per optimiser step: one factor per group, which Accelerate's wrapper adds nothing to."""
    def warmup_then_linear_decay(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (total - step) / max(1, total - warmup))

    factors = {"warmup_linear": warmup_then_linear_decay, "constant": lambda step: 1.0}
    return torch.optim.lr_scheduler.LambdaLR(optimizer, [factors[group.schedule] for group in owners])


def _progress_bar(disable: bool) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TimeRemainingColumn(), TextColumn("loss {task.fields[loss]:.4f}"), transient=False, disable=disable,
    )


class NonFinite(Exception):
    """A step's loss (or one of its terms) or gradient norm is inf or nan: the run cannot go on."""

    def __init__(self, what: str, value: float):
        super().__init__(what)
        self.what, self.value = what, value


@dataclass
class PhaseState:
    """Where a phase is: what a checkpoint saves and a resumed run continues from."""

    epoch: int = 0  # epochs completed
    batch: int = 0  # batches of the current epoch done (a checkpoint taken mid-epoch, on a signal)
    step: int = 0  # optimiser steps
    drawn: List[int] = field(default_factory=list)  # unlabelled examples drawn, per length bucket
    losses: List[float] = field(default_factory=list)  # the current epoch's, so far
    logs_sum: Dict[str, float] = field(default_factory=dict)
    best_score: float = -math.inf
    best_row: Optional[Dict[str, Any]] = None
    stale: int = 0
    done: bool = False
    averaged: int = 0  # optimiser steps in the weight average (phases with average_from)


def fit(strategy: Strategy, data: RunData, cfg: Any, accelerator, tokenizer, progress_bar: bool = True,
        checkpoints: Optional[Checkpoints] = None, stop: Optional[StopSignals] = None,
        on_epoch: Optional[Callable[[List[Dict[str, Any]]], None]] = None) -> FitResult:
    """Train through the strategy's phases; each phase ends with its selected checkpoint restored.
    With `checkpoints`, every epoch (and a stop signal) saves one, and a saved one is resumed from. `on_epoch` gets
    the history after each epoch. Without `progress_bar` (parallel jobs sharing one terminal), the epoch log lines
    show the progress."""
    result = FitResult()
    ctx = Context(cfg.train.epochs, cfg.seed, Path(cfg.paths.cache_dir).expanduser(), accelerator, tokenizer,
                  cfg.train.eval_batch_size, cfg.train.lr)
    saved = checkpoints.position() if checkpoints is not None else None
    if saved:
        result = FitResult(**saved["result"])
        log.info("resuming from %s: phase %d, epoch %d, batch %d", checkpoints.path, saved["phase"] + 1,
                 saved["state"]["epoch"], saved["state"]["batch"])
    run = _Run(strategy, data, cfg, ctx, result, checkpoints, stop or StopSignals(), on_epoch)
    with _progress_bar(disable=not progress_bar) as run.bar:
        for number, phase in enumerate(strategy.phases(data, ctx)):
            if phase.epochs == 0:  # nothing trains (zero-shot): the model as it is, scored once
                result.final = run.evaluate(phase)
                continue
            if len(phase.train) == 0:
                raise TransferError(f"phase '{phase.name}' has no examples to train on; use more data")
            strategy.start_phase(phase)
            if saved and number < saved["phase"]:  # trained before the interruption: its end state, as it was
                checkpoints.restore_phase_end(number, strategy)
                continue
            resuming = saved is not None and number == saved["phase"]
            state = PhaseState(**saved["state"]) if resuming else PhaseState()
            if resuming:  # this process's own unlabelled draws
                drawn = saved.get("drawn_per_process", [])
                state.drawn = drawn[accelerator.process_index] if len(drawn) == accelerator.num_processes else []
            result.final = run.phase(phase, number, state, resume=resuming)
            if checkpoints is not None:
                checkpoints.save_phase_end(number, strategy)
    return result


class _Unlabelled:
    """Unlabelled batches without end, each paired by length with the labelled batch it goes beside.

    The pool is cut into length buckets (equal-count, by rank). A labelled batch whose mean length sits at quantile q
    of its own set draws its partner from the bucket at q, so a discriminator or a batch statistic compares reviews
    of comparable length, not long source reviews with short target ones. A tie (reviews cut at max_length share one
    length) spreads over its whole quantile range, so that every bucket is drawn. Each bucket is a stream of its own
    (pass after pass, reshuffled per (seed, bucket, pass)), resumable from its count; each process draws from its
    own share of every bucket. `paired=False` makes one bucket: target batches at random, whatever the labelled one."""

    PER_BUCKET = 4  # batches per bucket, process and pass, at least
    TIES = 1 << 20  # the random stream that breaks ties (bucket streams are numbered from 0)

    def __init__(self, data: TokenizedSet, labelled: TokenizedSet, seed: int, size: int, paired: bool, ctx: Context,
                 drawn: Optional[List[int]]):
        accelerator, processes = ctx.accelerator, ctx.accelerator.num_processes
        n_buckets = max(1, min(10, len(data) // (size * self.PER_BUCKET * processes))) if paired else 1
        by_length = np.argsort(data.lengths, kind="stable")
        self.buckets = [b[accelerator.process_index::processes] for b in np.array_split(by_length, n_buckets)]
        if not all(len(b) for b in self.buckets):
            raise TransferError(f"the unlabelled target pool has {len(data)} examples, fewer than the {processes} "
                                "processes; use more target data or fewer processes")
        self.labelled_lengths = np.sort(labelled.lengths)
        self.collate, self.device, self.size, self.seed = Collate(data, ctx.pad_id), accelerator.device, size, seed
        self.drawn = list(drawn) if drawn else [0] * n_buckets  # examples drawn per bucket
        self._orders: Dict[int, tuple] = {}  # bucket -> (pass, its order in that pass)

    def bucket_of(self, batch: dict) -> int:
        if len(self.buckets) == 1:
            return 0
        mean_length = batch["attention_mask"].sum(1).float().mean().item()
        low, high = (np.searchsorted(self.labelled_lengths, mean_length, side) for side in ("left", "right"))
        tie = np.random.default_rng([self.seed, self.TIES, sum(self.drawn)]).random()
        quantile = (low + tie * (high - low)) / len(self.labelled_lengths)
        return min(int(quantile * len(self.buckets)), len(self.buckets) - 1)

    def _order(self, b: int, passes: int) -> np.ndarray:
        if self._orders.get(b, (None,))[0] != passes:
            bucket = self.buckets[b]
            self._orders[b] = (passes, bucket[np.random.default_rng([self.seed, b, passes]).permutation(len(bucket))])
        return self._orders[b][1]

    def beside(self, batch: dict) -> dict:
        b = self.bucket_of(batch)
        index = []
        while len(index) < min(self.size, len(self.buckets[b])):
            passes, offset = divmod(self.drawn[b], len(self.buckets[b]))
            take = self._order(b, passes)[offset: offset + self.size - len(index)]
            index += take.tolist()
            self.drawn[b] += len(take)
        return {k: v.to(self.device) for k, v in self.collate(index).items()}


class _Run:
    def __init__(self, strategy, data, cfg, ctx, result, checkpoints, stop, on_epoch):
        self.strategy, self.data, self.cfg, self.ctx, self.result = strategy, data, cfg, ctx, result
        self.checkpoints, self.stop, self.on_epoch, self.bar = checkpoints, stop, on_epoch, None
        self.window: List[Dict[str, float]] = []  # the logs of the batches since the last optimiser step
        self.average: Optional[WeightAverage] = None  # the current phase's, if it averages its weights
        self.sharpness = None  # the current phase's sharpness-aware term, if it has one
        # The module that computes the loss: on the device, with autocast, and under DDP with several processes.
        # Wrapped once, before any phase, over every parameter that trains in some phase (modules that a phase
        # creates later, such as ADDA's frozen source encoder, do not train).
        self.step_fn = ctx.accelerator.prepare_model(strategy)

    def phase(self, phase: Phase, number: int, state: PhaseState, resume: bool) -> Dict[str, Any]:
        strategy, cfg, accelerator, result = self.strategy, self.cfg, self.ctx.accelerator, self.result
        train = cfg.train
        model = phase.model or strategy.model
        batch_size = phase.batch_size or train.batch_size
        loader = train_loader(phase.train, batch_size, cfg.seed + number, self.ctx.pad_id,
                              train.group_by_length and phase.group_by_length, phase.batch_by)
        sampler, loader = loader.batch_sampler, accelerator.prepare_data_loader(loader, device_placement=True)
        accelerator.gradient_accumulation_steps = train.grad_accum_steps
        total_steps = math.ceil(len(loader) / train.grad_accum_steps) * phase.epochs
        optimizer, owners = _optimizer(strategy, train, phase)
        optimizer = accelerator.prepare_optimizer(optimizer)
        scheduler = _scheduler(optimizer, owners, int(train.warmup_ratio * total_steps), total_steps)
        trainable = [p for p in model.parameters() if p.requires_grad]
        self.average = None if phase.average_from is None else WeightAverage(strategy, phase.average_from)
        self.sharpness = phase.sharpness
        best_state = self.checkpoints.restore(strategy, optimizer, scheduler, self.average) if resume else None
        log.info("phase '%s': %d epochs of %d batches; global batch %d = %d per process x %d processes x %d "
                 "accumulation steps", phase.name, phase.epochs, len(loader),
                 batch_size * accelerator.num_processes * train.grad_accum_steps, batch_size,
                 accelerator.num_processes, train.grad_accum_steps)
        unlabelled = None
        if phase.unlabelled is not None:
            # random labelled batches have no length to match
            paired = train.pair_by_length and train.group_by_length and phase.group_by_length
            unlabelled = _Unlabelled(phase.unlabelled, phase.train, cfg.seed + 1000 + number, batch_size, paired,
                                     self.ctx, state.drawn)

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
                    try:
                        self._step(batch, unlabelled, state, optimizer, owners, scheduler, total_steps)
                    except NonFinite as e:
                        raise TransferError(
                            f"the {e.what} became {e.value} at step {state.step + 1}, epoch {epoch} of phase "
                            f"'{phase.name}'; lower train.lr, or train in fp32 (hardware=cpu, or "
                            "hardware.precision=fp32)") from None
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
                if self.average is not None:
                    row["averaged_steps"] = state.averaged
                with self._averaged(state):
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
                    with self._averaged(state):
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
        elif self.average is not None and state.averaged:
            self.average.apply()
        for p in trainable:  # gradual unfreezing ends with everything the phase trained unfrozen
            p.requires_grad_(True)
        state.best_row["selected"] = True
        return state.best_row

    def evaluate(self, phase: Phase) -> Dict[str, Any]:
        """The scores of a phase that trains nothing: one row, epoch 0, selection `none` (there is nothing to select)
        unless the phase names one."""
        self.strategy.eval()
        model = phase.model or self.strategy.model
        row = {"phase": phase.name, "epoch": 0, **_score_epoch(model, self.data, phase, self.ctx, self.result)}
        row.update(selection=phase.selection or "none", selection_score=None, selected=True)
        self.result.history.append(row)
        log.info("%s (no training): source val acc %.4f, target test acc %.4f", phase.name,
                 row["source_val_accuracy"], row["target_test_accuracy"])
        if self.on_epoch is not None and self.ctx.accelerator.is_main_process:
            self.on_epoch(self.result.history)
        return row

    def _step(self, batch: dict, unlabelled: Optional[_Unlabelled], state: PhaseState, optimizer,
              owners: List[Group], scheduler, total_steps: int) -> None:
        """One batch: the strategy's loss, one backward (at perturbed weights, in a sharpness-aware phase); at the end
        of each accumulation, an update of each group that is due (its ratio, and its gate on the window's mean logs),
        clipped per group, then its clamp."""
        accelerator, train = self.ctx.accelerator, self.cfg.train
        with accelerator.accumulate(self.step_fn):
            with ascended(self.sharpness, batch, accelerator):  # sharpness-aware: the gradient at w + ε
                with accelerator.autocast():
                    partner = unlabelled.beside(batch) if unlabelled else None
                    loss, logs = self.step_fn(batch, partner, state.step / max(1, total_steps))
                if not torch.isfinite(loss):  # name the term that did it, where the strategy logs its terms
                    term = next((k for k, v in logs.items() if not math.isfinite(v)), "loss")
                    raise NonFinite(term if term == "loss" else f"loss term {term}", loss.item())
                accelerator.backward(loss)
            self.window.append(logs)
            updated = {}  # id(Group) -> its parameters
            if accelerator.sync_gradients:
                state.step += 1
                updated = self._due(state.step, owners, optimizer)
                for owner in {id(o): o for o in owners}.values():
                    if owner.every > 1 or owner.gate:  # history: the share of optimiser steps it took
                        key = f"{owner.name}_updated"
                        state.logs_sum[key] = state.logs_sum.get(key, 0.0) + len(self.window) * (id(owner) in updated)
                logs_window, self.window = self.window, []
                accelerator.unscale_gradients(optimizer)  # fp16: clip the true gradients
                squares = 0.0
                for owner, params in updated.values():
                    norm = train.max_grad_norm if owner.max_grad_norm is None else owner.max_grad_norm
                    squares += float(torch.nn.utils.clip_grad_norm_(params, norm if norm > 0 else math.inf)) ** 2
                grad_norm = math.sqrt(squares)  # before clipping: what history.csv's grad_norm averages
                if not math.isfinite(grad_norm) and accelerator.mixed_precision != "fp16":  # (fp16 skips such steps)
                    raise NonFinite("gradient norm", grad_norm)
                state.logs_sum["grad_norm"] = state.logs_sum.get("grad_norm", 0.0) + len(logs_window) * grad_norm
            if updated or not accelerator.sync_gradients:  # (a step with no group due is no step: fp16 would fail)
                optimizer.step()  # Accelerate's optimiser steps only at the end of an accumulation
            if accelerator.sync_gradients and not optimizer.step_was_skipped:
                scheduler.step()
                with torch.no_grad():
                    for owner, params in updated.values():
                        if owner.clamp is not None:
                            for p in params:
                                p.clamp_(-owner.clamp, owner.clamp)
                if self.average is not None and state.step > self.average.start * total_steps:
                    state.averaged += 1
                    self.average.add(state.averaged)
            optimizer.zero_grad(set_to_none=True)
        state.batch += 1
        state.drawn = list(unlabelled.drawn) if unlabelled else []
        state.losses.append(loss.item())
        for k, v in logs.items():
            state.logs_sum[k] = state.logs_sum.get(k, 0.0) + v

    def _due(self, step: int, owners: List[Group], optimizer) -> Dict[int, tuple]:
        """The groups that update on this optimiser step, with their parameters; the others' gradients are set to
        None, which AdamW skips (weights and moments stay as they were). A gate reads the logs of the accumulation
        window, averaged over it and over the processes, so that every process decides alike."""
        logs = {k: sum(w[k] for w in self.window) / len(self.window) for k in self.window[-1]}
        if self.ctx.accelerator.num_processes > 1 and any(owner.gate for owner in owners):
            logs = _mean_over_processes(logs, self.ctx.accelerator)
        due = {id(owner): owner.updates(step, logs) for owner in owners}
        updated: Dict[int, tuple] = {}
        for group, owner in zip(optimizer.param_groups, owners):
            if due[id(owner)]:
                updated.setdefault(id(owner), (owner, []))[1].extend(group["params"])
            else:
                for p in group["params"]:
                    p.grad = None
        return updated

    def _averaged(self, state: PhaseState):
        """A block in which the weights are the phase's average, once it has begun (else the live ones)."""
        return self.average.applied(state.averaged > 0) if self.average is not None else nullcontext()

    def _checkpoint(self, number: int, state: PhaseState, strategy, optimizer, scheduler, best_state) -> None:
        if self.checkpoints is None:
            return
        from accelerate.utils import gather_object

        drawn = gather_object([state.drawn])  # every process draws its own unlabelled batches
        position = {"phase": number, "state": asdict(state), "drawn_per_process": drawn, "result": asdict(self.result)}
        average = self.average.state_dict() if self.average is not None and state.averaged else None
        self.checkpoints.save(position, strategy, optimizer, scheduler, best_state, average)


def _mean_over_processes(logs: Dict[str, float], accelerator) -> Dict[str, float]:
    values = accelerator.reduce(torch.tensor(list(logs.values()), device=accelerator.device), reduction="mean")
    return dict(zip(logs, values.tolist()))


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
