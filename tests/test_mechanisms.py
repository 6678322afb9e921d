"""What the strategies do, proven on the tiny model: gradient reversal, DANN's schedule, and who sees target labels."""

from __future__ import annotations

import math

import pytest
import torch

from transfer_cli.data import build_data
from transfer_cli.losses import DomainDiscriminator, GradientReversal, dann_lambda
from transfer_cli.strategies import build_strategy

from .test_data import demo_config


def test_gradient_reversal_flips_and_scales_gradients():
    x = torch.randn(4, 3, requires_grad=True)
    w = torch.randn(4, 3)
    (GradientReversal()(x, 0.5) * w).sum().backward()
    assert torch.allclose(x.grad, -0.5 * w)
    y = x.detach().clone().requires_grad_()
    assert torch.equal(GradientReversal()(y, 0.5), y)  # identity forward


def test_dann_lambda_schedule():
    assert dann_lambda(0.0) == 0.0
    assert dann_lambda(1.0) == pytest.approx(2 / (1 + math.exp(-10)) - 1)
    values = [dann_lambda(p / 10) for p in range(11)]
    assert values == sorted(values) and values[-1] > 0.99


def test_dann_encoder_ascends_domain_loss(tiny_model):
    """One DANN step moves the features to make the discriminator's job harder (its loss goes up), while a plain
    step on the same discriminator loss without reversal makes it easier."""
    torch.manual_seed(0)
    batch = lambda: {"input_ids": torch.randint(1000, 2000, (8, 12)), "attention_mask": torch.ones(8, 12, dtype=torch.long)}  # noqa: E731
    source, target = batch(), batch()
    disc = DomainDiscriminator(tiny_model.feature_dim, 16)
    domain = torch.cat([torch.zeros(8), torch.ones(8)])

    def domain_loss(reverse: bool):
        feats = torch.cat([tiny_model.features(**source), tiny_model.features(**target)])
        feats = GradientReversal()(feats, 1.0) if reverse else feats
        return torch.nn.functional.binary_cross_entropy_with_logits(disc(feats).squeeze(-1), domain)

    tiny_model.eval()
    state = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    changes = {}
    for reverse in (True, False):
        tiny_model.load_state_dict(state)
        before = domain_loss(False).item()
        opt = torch.optim.SGD(tiny_model.parameters(), lr=0.5)
        domain_loss(reverse).backward()
        opt.step()
        opt.zero_grad()
        changes[reverse] = domain_loss(False).item() - before
    assert changes[True] > 0 > changes[False]


@pytest.mark.parametrize(
    "strategy, expected",
    [("source_only", 0), ("dann", 0), ("finetune", 20), ("target_oracle", 100)],
)
def test_who_sees_target_labels(tokenizer, tiny_model, tmp_path, ctx, strategy, expected):
    data = build_data(demo_config(), tokenizer, tmp_path, tmp_path / "cache")
    extra = {"k": 20} if strategy == "finetune" else {}
    phases = build_strategy({"name": strategy, **extra}, tiny_model).phases(data, ctx)
    assert data.target_labels_used == expected
    for phase in phases:
        if phase.unlabelled is not None:
            assert phase.unlabelled.labels is None
    if strategy in ("source_only", "dann"):
        assert all(phase.train is data.source_train for phase in phases)


def test_strategy_params_are_validated(tiny_model):
    from transfer_cli.errors import TransferError

    with pytest.raises(TransferError, match="wieght.*weight, gamma, hidden"):
        build_strategy({"name": "dann", "wieght": 2.0}, tiny_model)


def test_dann_step_returns_its_parts(tiny_model):
    strategy = build_strategy({"name": "dann"}, tiny_model)
    batch = {"input_ids": torch.randint(1000, 2000, (4, 10)), "attention_mask": torch.ones(4, 10, dtype=torch.long)}
    loss, logs = strategy({**batch, "labels": torch.tensor([0, 1, 0, 1])}, batch, progress=0.5)
    assert loss.requires_grad and set(logs) == {"task_loss", "domain_loss", "domain_acc", "lambda"}
    assert logs["lambda"] == pytest.approx(dann_lambda(0.5))
    assert loss.item() == pytest.approx(logs["task_loss"] + logs["domain_loss"], rel=1e-4)
