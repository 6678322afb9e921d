"""The label-free validators on constructed outputs whose answer is known, and `selection=` in the loop."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from transfer_cli.training.validators import (deep_embedded_validation, prediction_entropy, score,
                                              soft_neighbourhood_density)


def test_entropy_of_uniform_and_confident_predictions():
    assert prediction_entropy(torch.full((10, 4), 0.25)) == pytest.approx(math.log(4))
    assert prediction_entropy(torch.eye(4)) == pytest.approx(0.0, abs=1e-6)
    assert score("entropy", {"target_entropy": 0.2}) > score("entropy", {"target_entropy": 0.5})  # lower is better


def test_snd_prefers_dense_neighbourhoods():
    rng = np.random.default_rng(0)
    # two tight clusters of predictions (a well-separated, confident target) vs predictions spread over the simplex
    clustered = torch.tensor(np.where(rng.random(200) < 0.5, 0.95, 0.05), dtype=torch.float32)
    clustered = torch.stack([clustered, 1 - clustered], -1) + torch.randn(200, 2) * 1e-3
    spread = torch.tensor(rng.dirichlet([1, 1], size=200), dtype=torch.float32)
    assert soft_neighbourhood_density(clustered) > soft_neighbourhood_density(spread)
    # chunking is only a memory bound: the same value, and self-pairs are never neighbours
    assert soft_neighbourhood_density(spread, chunk=7) == pytest.approx(soft_neighbourhood_density(spread), rel=1e-5)
    identical = torch.tensor([[0.9, 0.1]] * 5)
    assert soft_neighbourhood_density(identical) == pytest.approx(math.log(4), rel=1e-5)


def test_dev_weights_the_source_risk_towards_the_target():
    """Source losses are 1 where x > 0, else 0 (risk 0.5). On a target shifted by 1.5 the risk is Φ(1.5) = 0.933,
    which DEV estimates from the source examples alone; an unshifted target keeps about 0.5."""
    rng = np.random.default_rng(0)
    source = rng.normal(0, 1, size=(600, 4))
    losses = torch.tensor((source[:, 0] > 0).astype(np.float32))
    unshifted = torch.tensor(rng.normal(0, 1, size=(600, 4)), dtype=torch.float32)
    shifted = unshifted + torch.tensor([1.5, 0, 0, 0])
    source = torch.tensor(source, dtype=torch.float32)
    assert deep_embedded_validation(source, losses, unshifted) == pytest.approx(0.5, abs=0.1)
    assert deep_embedded_validation(source, losses, shifted) == pytest.approx(0.933, abs=0.05)


def test_too_few_examples_give_no_score():
    one, two = torch.ones(1, 4), torch.ones(2, 4)
    assert math.isnan(soft_neighbourhood_density(torch.tensor([[0.9, 0.1]])))
    assert math.isnan(deep_embedded_validation(one, torch.ones(1), two))
    assert math.isnan(deep_embedded_validation(two, torch.ones(2), one))


def test_selection_picks_the_validators_best_epoch(tiny_model):
    from .test_loop import fit

    result, snapshots, model = fit(tiny_model, [0.9, 0.5, 0.7], epochs=3, patience=5, selection="entropy",
                                   extra=[{"target_entropy": e} for e in (0.6, 0.2, 0.4)])
    assert [row["selection"] for row in result.history] == ["entropy"] * 3
    assert result.final["epoch"] == 2 and result.final["selection_score"] == pytest.approx(-0.2)
    assert all(torch.equal(v, snapshots[1][k]) for k, v in model.state_dict().items())
