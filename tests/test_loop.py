"""The one training loop: checkpoint selection and restore, early stopping, accumulation, the schedule, groups and
weight averaging."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

from transfer_cli.config import Device, HardwareConfig, Precision, RunConfig, Selection, TrainConfig
from transfer_cli.data.batching import TokenizedSet
from transfer_cli.hardware import setup
from transfer_cli.strategies import Group, Phase, Sharpness, Strategy
from transfer_cli.training import loop


class OnePhase(Strategy):
    """Plain supervised training on a given labelled set, for a given number of epochs."""

    name = "one_phase"

    def __init__(self, model, data, epochs, average_from=None):
        super().__init__(None, model)
        self.data, self.epochs, self.average_from = data, epochs, average_from

    def phases(self, data, ctx):
        return [Phase("train", self.data, self.epochs, average_from=self.average_from)]


def labelled(n):
    rng = np.random.default_rng(0)
    return TokenizedSet([rng.integers(1000, 2000, size=rng.integers(4, 12)).astype(np.int32) for _ in range(n)],
                        np.arange(n) % 2)


class FakeData:  # evaluation is scripted, so the sets are never read
    source_val = target_test = None


def fit(model, scores, epochs, n=40, selection="source_val", extra=(), average_from=None, make=OnePhase, **train):
    """Run the loop with scripted source-validation accuracies (and `extra` columns per epoch); return the result
    and the weights at each epoch."""
    cfg = RunConfig(train=TrainConfig(batch_size=8, lr=1e-3, **train), selection=Selection(selection))
    accelerator = setup(HardwareConfig(name="cpu", device=Device.cpu, precision=Precision.fp32), 0).accelerator
    snapshots, script, extra = [], iter(scores), iter(extra)

    def scripted(model_, *_):
        snapshots.append({k: v.clone() for k, v in model_.state_dict().items()})
        return {"source_val_accuracy": next(script), "target_test_accuracy": 0.0, **next(extra, {})}

    original, loop._score_epoch = loop._score_epoch, scripted
    try:
        strategy = make(model, labelled(n), epochs, average_from)
        result = loop.fit(strategy, FakeData(), cfg, accelerator, SimpleNamespace(pad_token_id=0))
    finally:
        loop._score_epoch = original
    return result, snapshots, model


def same(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("best", [0, 1, 2])
def test_restores_the_selected_epoch(tiny_model, best):
    scores = [0.5, 0.5, 0.5]
    scores[best] = 0.9
    result, snapshots, model = fit(tiny_model, scores, epochs=3, patience=5)
    assert result.final["epoch"] == best + 1 and len(result.history) == 3
    assert same(model.state_dict(), snapshots[best])


def test_early_stopping(tiny_model):
    result, snapshots, model = fit(tiny_model, [0.9, 0.5, 0.4, 0.3, 0.2], epochs=5, patience=2)
    assert [row["epoch"] for row in result.history] == [1, 2, 3]  # stopped after 2 epochs without gain
    assert result.final["epoch"] == 1 and same(model.state_dict(), snapshots[0])


@pytest.mark.parametrize("best", [0, 1, 2])
def test_weight_averaging_evaluates_and_keeps_the_mean_and_trains_on_from_the_live_weights(tiny_model, best):
    """3 epochs of 5 steps, averaged past half the phase (steps 8-15): epoch 1 is scored on the live weights, epochs
    2 and 3 on the running mean; the selected epoch's weights are kept; step 11 starts from step 10's live weights
    (the evaluation's swap is undone)."""
    before_step, after_step = [], []
    weights = lambda: {k: v.detach().clone() for k, v in tiny_model.state_dict().items()}  # noqa: E731
    hooks = [register_optimizer_step_pre_hook(lambda *_: before_step.append(weights())),
             register_optimizer_step_post_hook(lambda *_: after_step.append(weights()))]
    scores = [0.5, 0.5, 0.5]
    scores[best] = 0.9
    try:
        result, snapshots, model = fit(tiny_model, scores, epochs=3, n=40, average_from=0.5, patience=5)
    finally:
        for hook in hooks:
            hook.remove()
    assert len(after_step) == 15 and [row["averaged_steps"] for row in result.history] == [0, 3, 8]
    trained = [k for k, _ in model.named_parameters()]
    mean = lambda steps: {k: torch.stack([w[k] for w in steps]).mean(0) for k in trained}  # noqa: E731
    close = lambda a, b: all(torch.allclose(a[k], b[k], atol=1e-6) for k in trained)  # noqa: E731
    assert same(snapshots[0], after_step[4])
    assert close(snapshots[1], mean(after_step[7:10])) and close(snapshots[2], mean(after_step[7:15]))
    assert not close(snapshots[2], after_step[14])  # the mean is not the last weights
    assert same(before_step[10], after_step[9])
    assert same(model.state_dict(), snapshots[best])


class SharpnessAware(OnePhase):
    """SAM on the task loss, ρ = 0.5; remembers the batches it trained on."""

    RHO = 0.5

    def __init__(self, *args):
        super().__init__(*args)
        self.batches = []

    def phases(self, data, ctx):
        (phase,) = super().phases(data, ctx)
        phase.sharpness = Sharpness(self.RHO, lambda batch: self.task_loss(batch)[0], [self.model])
        return [phase]

    def loss(self, labelled, unlabelled, progress):
        self.batches.append({k: v.clone() for k, v in labelled.items()})
        return super().loss(labelled, unlabelled, progress)


def test_a_sharpness_aware_phase_steps_with_the_gradient_at_the_perturbed_weights(tiny_model):
    """Each update's gradient is the loss's at w + ρ·g/‖g‖ (g: the term's gradient at w), and the update starts from
    w itself: the loop puts the weights back before it steps."""
    for m in tiny_model.modules():  # no dropout, so that a pass can be repeated
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    seen = []
    record = lambda opt, *_: seen.append(  # noqa: E731
        ({k: p.detach().clone() for k, p in tiny_model.named_parameters()},
         {k: p.grad.clone() for k, p in tiny_model.named_parameters() if p.grad is not None}))
    made = []
    make = lambda *args: made.append(SharpnessAware(*args)) or made[-1]  # noqa: E731
    hook = register_optimizer_step_pre_hook(record)
    try:  # no clipping: the optimiser sees the gradient itself
        fit(tiny_model, [0.5], epochs=1, n=16, make=make, warmup_ratio=0.0, max_grad_norm=0.0)
    finally:
        hook.remove()
    assert len(seen) == len(made[0].batches) == 2
    probe = copy.deepcopy(tiny_model)
    for (weights, grads), batch in zip(seen, made[0].batches):
        probe.load_state_dict(weights, strict=False)
        term = OnePhase(probe, None, 1).task_loss(batch)[0]
        g = torch.autograd.grad(term, list(probe.parameters()), allow_unused=True)
        norm = torch.sqrt(sum((x ** 2).sum() for x in g if x is not None))
        with torch.no_grad():
            for p, x in zip(probe.parameters(), g):
                if x is not None:
                    p.add_(SharpnessAware.RHO * x / norm)
        probe.zero_grad()
        OnePhase(probe, None, 1).task_loss(batch)[0].backward()
        at_perturbed = {k: p.grad for k, p in probe.named_parameters() if p.grad is not None}
        assert grads.keys() == at_perturbed.keys()
        assert all(torch.allclose(grads[k], at_perturbed[k], atol=1e-6) for k in grads)


@pytest.mark.parametrize("accum, expected_steps", [(1, 5), (2, 3), (3, 2)])
def test_gradient_accumulation_steps_and_schedule(tiny_model, accum, expected_steps):
    steps = []
    hook = register_optimizer_step_post_hook(lambda opt, args, kwargs: steps.append(opt.param_groups[0]["lr"]))
    try:
        result, _, _ = fit(tiny_model, [0.5], epochs=1, n=40, grad_accum_steps=accum, warmup_ratio=0.0)
    finally:
        hook.remove()
    assert len(steps) == expected_steps  # 5 batches of 8
    assert steps == sorted(steps, reverse=True) and steps[0] == pytest.approx(1e-3)  # linear decay, no warmup
    assert result.history[0]["lr"] == pytest.approx(0.0)


class Grouped(OnePhase):
    """Three extra linear modules in groups of their own: `a` updates every 2nd step, `b` only on steps whose logs
    say `open`, `c` is clamped to ±0.01 after a large step. Records the modules' weights at each step."""

    def __init__(self, model, data):
        super().__init__(model, data, 1)
        self.a, self.b, self.c = (torch.nn.Linear(4, 1) for _ in range(3))
        self.seen = []

    def phases(self, data, ctx):
        groups = [Group("a", [self.a], every=2), Group("b", [self.b], gate=lambda logs: logs["open"] > 0),
                  Group("c", [self.c], lr=1.0, schedule="constant", max_grad_norm=0.0, clamp=0.01)]
        return [Phase("train", self.data, self.epochs, groups=groups)]

    def loss(self, labelled, unlabelled, progress):
        self.seen.append({k: m.weight.detach().clone() for k, m in (("a", self.a), ("b", self.b), ("c", self.c))})
        task, _ = self.task_loss(labelled)
        x = torch.ones(1, 4)
        return task + (self.a(x) + self.b(x) + self.c(x)).sum(), {"open": float(len(self.seen) % 3 == 0)}


def test_groups_update_on_their_own_ratio_gate_and_constraint(tiny_model):
    cfg = RunConfig(train=TrainConfig(batch_size=8, lr=1e-3, warmup_ratio=0.0))
    accelerator = setup(HardwareConfig(name="cpu", device=Device.cpu, precision=Precision.fp32), 0).accelerator
    strategy = Grouped(tiny_model, labelled(56))  # 7 steps
    original, loop._score_epoch = loop._score_epoch, lambda *_: {"source_val_accuracy": 0.5, "target_test_accuracy": 0}
    try:
        loop.fit(strategy, FakeData(), cfg, accelerator, SimpleNamespace(pad_token_id=0))
    finally:
        loop._score_epoch = original
    seen = strategy.seen + [{"a": strategy.a.weight, "b": strategy.b.weight, "c": strategy.c.weight}]
    moved = {k: [not torch.equal(seen[i][k], seen[i + 1][k]) for i in range(7)] for k in "abc"}
    assert moved["a"] == [step % 2 == 0 for step in range(1, 8)]
    assert moved["b"] == [step % 3 == 0 for step in range(1, 8)]
    # lr 1 on a constant gradient would take c to about -7; clamped, it stops at the bound
    assert moved["c"][0] and torch.allclose(strategy.c.weight, torch.full((1, 4), -0.01))


def test_each_group_gets_its_own_rate_decay_momentum_and_schedule(tiny_model):
    """A group's lr, weight decay, betas and schedule reach its param groups (no decay on biases); what no group
    holds trains with the run's settings."""
    train = TrainConfig(lr=1e-3, weight_decay=0.01)
    strategy = Grouped(tiny_model, labelled(8))
    groups = [Group("a", [strategy.a], lr=1e-2, weight_decay=0.0, betas=(0.5, 0.999), schedule="constant"),
              Group("b", [strategy.b], lr=1e-4, weight_decay=0.3)]
    optimizer, owners = loop._optimizer(strategy, train, Phase("train", None, 1, groups=groups))
    scheduler = loop._scheduler(optimizer, owners, warmup=0, total=10)
    settings = {id(p): group for group in optimizer.param_groups for p in group["params"]}
    a, b = settings[id(strategy.a.weight)], settings[id(strategy.b.weight)]
    backbone = settings[id(next(tiny_model.backbone.parameters()))]
    assert (a["lr"], a["weight_decay"], a["betas"]) == (1e-2, 0.0, (0.5, 0.999))
    assert (b["lr"], b["weight_decay"], b["betas"]) == (1e-4, 0.3, (0.9, 0.999))
    assert settings[id(strategy.b.bias)]["weight_decay"] == 0.0
    assert (backbone["lr"], backbone["weight_decay"]) == (1e-3, 0.01)
    for _ in range(5):
        optimizer.step()
        scheduler.step()
    assert a["lr"] == 1e-2 and b["lr"] == pytest.approx(0.5e-4) and backbone["lr"] == pytest.approx(0.5e-3)


class WindowGated(OnePhase):
    """One gated module; its batches log open = 1, 0, 1, 0, ...: only the mean over an accumulation window of two
    (0.5) passes the gate, neither batch alone does."""

    def __init__(self, model, data):
        super().__init__(model, data, 1)
        self.g, self.calls = torch.nn.Linear(4, 1), 0

    def phases(self, data, ctx):
        return [Phase("train", self.data, self.epochs, groups=[Group("g", [self.g], gate=lambda logs: 0.4 < logs["open"] < 0.6)])]

    def loss(self, labelled, unlabelled, progress):
        self.calls += 1
        task, _ = self.task_loss(labelled)
        return task + self.g(torch.ones(1, 4)).sum(), {"open": float(self.calls % 2)}


def test_a_gate_reads_the_mean_logs_of_its_accumulation_window(tiny_model):
    cfg = RunConfig(train=TrainConfig(batch_size=8, lr=1e-3, warmup_ratio=0.0, grad_accum_steps=2))
    accelerator = setup(HardwareConfig(name="cpu", device=Device.cpu, precision=Precision.fp32), 0).accelerator
    strategy = WindowGated(tiny_model, labelled(32))  # 4 batches, 2 optimiser steps
    before = strategy.g.weight.detach().clone()
    original, loop._score_epoch = loop._score_epoch, lambda *_: {"source_val_accuracy": 0.5, "target_test_accuracy": 0}
    try:
        result = loop.fit(strategy, FakeData(), cfg, accelerator, SimpleNamespace(pad_token_id=0))
    finally:
        loop._score_epoch = original
    assert not torch.equal(before, strategy.g.weight) and result.history[0]["g_updated"] == 1.0


def test_unlabelled_batches_are_paired_by_length(ctx):
    """A target batch drawn beside a source batch has a comparable length rank; without pairing, any length.
    A stream rebuilt from its counts continues with the same batches (resume)."""
    rng = np.random.default_rng(0)
    # a third of each set cut at its max_length (50, 100): ties that must not starve the longest buckets
    texts = lambda n, scale: [np.ones(int(min(rng.integers(4, 75), 50) * scale), dtype=np.int32) for _ in range(n)]  # noqa: E731
    source, target = TokenizedSet(texts(400, 1), np.zeros(400, dtype=np.int64)), TokenizedSet(texts(400, 2))
    loader = loop.train_loader(source, 16, 0, 0)
    mean_length = lambda b: b["attention_mask"].sum(1).float().mean().item()  # noqa: E731
    for paired, lowest in ((True, 0.8), (False, -1.0)):
        stream = loop._Unlabelled(target, source, 0, 16, paired, ctx, None)
        pairs = [(mean_length(b), mean_length(stream.beside(b))) for b in loader]
        correlation = np.corrcoef(np.array(pairs).T)[0, 1]
        assert correlation > lowest if paired else abs(correlation) < 0.3
        assert min(stream.drawn) > 0  # every bucket is drawn, the ties at max_length included
    batches = list(loader)
    resumed = loop._Unlabelled(target, source, 0, 16, True, ctx, None)
    first = [resumed.beside(b)["index"] for b in batches]
    again = loop._Unlabelled(target, source, 0, 16, True, ctx, resumed.drawn)
    rest, more = [again.beside(b)["index"] for b in batches], [resumed.beside(b)["index"] for b in batches]
    assert all(torch.equal(x, y) for x, y in zip(rest, more)) and not torch.equal(first[0], rest[0])


def test_a_parameter_in_two_groups_is_refused(tiny_model):
    strategy = OnePhase(tiny_model, labelled(8), 1)
    phase = Phase("train", labelled(8), 1, groups=[Group("a", [tiny_model.head]), Group("b", [tiny_model])])
    with pytest.raises(ValueError, match="in two groups of phase 'train': a, b"):
        loop._optimizer(strategy, TrainConfig(), phase)
