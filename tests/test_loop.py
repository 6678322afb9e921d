"""The one training loop: checkpoint selection and restore, early stopping, accumulation, the schedule."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

from transfer_cli.config import Device, HardwareConfig, Precision, RunConfig, Selection, TrainConfig
from transfer_cli.data.batching import TokenizedSet
from transfer_cli.hardware import setup
from transfer_cli.strategies import Phase, Strategy
from transfer_cli.training import loop


class OnePhase(Strategy):
    """Plain supervised training on a given labelled set, for a given number of epochs."""

    name = "one_phase"

    def __init__(self, model, data, epochs):
        super().__init__(None, model)
        self.data, self.epochs = data, epochs

    def phases(self, data, ctx):
        return [Phase("train", self.data, self.epochs)]


def labelled(n):
    rng = np.random.default_rng(0)
    return TokenizedSet([rng.integers(1000, 2000, size=rng.integers(4, 12)).astype(np.int32) for _ in range(n)],
                        np.arange(n) % 2)


class FakeData:  # evaluation is scripted, so the sets are never read
    source_val = target_test = None


def fit(model, scores, epochs, n=40, selection="source_val", extra=(), **train):
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
        result = loop.fit(OnePhase(model, labelled(n), epochs), FakeData(), cfg, accelerator, SimpleNamespace(pad_token_id=0))
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
