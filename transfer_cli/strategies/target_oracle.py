"""Target oracle: train, and select the checkpoint, on labelled target data.

The upper bound of transfer: what a model reaches with target labels. It is marked oracle in every output."""

from dataclasses import dataclass

import numpy as np

from ..data.batching import TokenizedSet
from .base import Phase, Strategy, check


class TargetOracle(Strategy):
    name = "target_oracle"
    target_labels = "all"
    oracle = True
    source_labels = False

    @dataclass
    class Params:
        val_fraction: float = 0.1  # of the labelled target pool, held out to select the checkpoint

        def __post_init__(self):
            check(0 < self.val_fraction < 1, f"strategy.val_fraction={self.val_fraction} must be in (0, 1)")

    def phases(self, data, ctx):
        pool = data.labelled_target(None, ctx.seed)
        order = np.random.default_rng(ctx.seed).permutation(len(pool))
        n_val = max(1, int(len(pool) * self.params.val_fraction))
        take = lambda idx: TokenizedSet([pool.ids[i] for i in idx], pool.labels[idx])  # noqa: E731
        return [Phase("target", take(order[n_val:]), ctx.epochs, selection="target_val", val=take(order[:n_val]))]
