"""Contrastive few-shot learning, the SetFit recipe (Tunstall et al., "Efficient Few-Shot Learning Without
Prompts", 2022): fine-tune the sentence encoder E on pairs of the k labelled target examples, so that texts of one
class move together, then fit a logistic-regression head on the tuned embeddings of the k examples.

    phase "contrastive":  L = mean over pairs (i, j) of (cos(E(x_i), E(x_j)) - [y_i = y_j])²
    head:                 logistic regression (scikit-learn, C = 1, as SetFit) on E(x) of the k examples

Deviations from SetFit's code, so that it runs in the one loop (checkpoints, devices, precision):
- the pairs are every pair of examples within a batch (of distinct examples), instead of a pre-drawn list of one
  positive and one negative pair per example and iteration: each example appears `repeats` times in the phase, in
  random batches, so it meets about `repeats` × (batch size - 1) partners;
- with `source_pairs`, as many labelled source examples as shot appearances join the batches (the issue's option:
  pairs across domains share a class, which pulls the two domains' classes together); the head still fits on the k
  target examples only.
The setfit library itself brings its own trainer, which would bypass the loop (checkpoints, resume, Accelerate).
No held-out target labels exist, so the last state is kept (`selection: last`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterable

import numpy as np
import torch
import torch.nn.functional as F

from ..data.batching import TokenizedSet
from .base import Context, Phase, Strategy, check

log = logging.getLogger(__name__)


def pair_loss(features: torch.Tensor, labels: torch.Tensor, example: torch.Tensor) -> torch.Tensor:
    """SetFit's cosine-similarity loss over every pair (i < j) of distinct examples of a batch."""
    cosine = F.normalize(features.float(), dim=-1) @ F.normalize(features.float(), dim=-1).T
    same = (labels[:, None] == labels[None, :]).float()
    pairs = torch.triu(example[:, None] != example[None, :], diagonal=1)
    if not pairs.any():  # a batch of one example: a zero that keeps the graph
        return cosine.sum() * 0.0
    return ((cosine - same)[pairs] ** 2).mean()


class SetFit(Strategy):
    name = "setfit"
    target_labels = "few"

    @dataclass
    class Params:
        k: int = 16  # labelled target examples
        repeats: int = 20  # appearances of each example in the contrastive phase (SetFit's num_iterations)
        epochs: int = 1
        lr: float = 2.0e-5  # SetFit's body learning rate
        source_pairs: bool = False

        def __post_init__(self):
            check(self.k >= 2, f"strategy.k={self.k} must be >= 2 (pairs need two examples)")
            check(self.repeats >= 1, f"strategy.repeats={self.repeats} must be >= 1")
            check(self.epochs >= 1, f"strategy.epochs={self.epochs} must be >= 1")
            check(self.lr > 0, f"strategy.lr={self.lr} must be > 0")

    def __init__(self, params, model):
        super().__init__(params, model)
        self.source_labels = params.source_pairs
        self.example = torch.zeros(0, dtype=torch.long)  # the example behind each position of the pair set

    def pair_set(self, shots: TokenizedSet, data, seed: int) -> TokenizedSet:
        """The k shots, each `repeats` times; with `source_pairs`, as many labelled source examples besides."""
        k = len(shots)
        ids, labels = list(shots.ids) * self.params.repeats, np.tile(shots.labels, self.params.repeats)
        example = np.tile(np.arange(k), self.params.repeats)
        if self.params.source_pairs:
            source = data.source_train
            drawn = np.random.default_rng(seed).choice(len(source), min(len(ids), len(source)), replace=False)
            ids += [source.ids[i] for i in drawn]
            labels = np.concatenate([labels, source.labels[drawn]])
            example = np.concatenate([example, k + drawn])
        self.example = torch.from_numpy(example)
        return TokenizedSet(ids, labels)

    def phases(self, data, ctx: Context) -> Iterable[Phase]:
        shots = data.labelled_target(self.params.k, ctx.seed)
        pairs = self.pair_set(shots, data, ctx.seed)
        yield Phase("contrastive", pairs, self.params.epochs, selection="last", lr=self.params.lr,
                    group_by_length=False)
        self.fit_head(ctx.features(self.model, shots), shots.labels)
        yield Phase("head", TokenizedSet([]), epochs=0, selection="last")

    def loss(self, labelled, unlabelled, progress):
        features = self.model.features(**labelled)
        loss = pair_loss(features, labelled["labels"], self.example.to(features.device)[labelled["index"]])
        return loss, {"pair_loss": loss.item()}

    def fit_head(self, features: torch.Tensor, labels: np.ndarray) -> None:
        """Logistic regression on the shots' embeddings, written into the model's linear head."""
        from sklearn.linear_model import LogisticRegression

        classes = self.model.num_labels
        fitted = LogisticRegression(max_iter=1000).fit(features.numpy(), labels)
        weight = np.zeros((classes, features.shape[1]), np.float32)
        bias = np.zeros(classes, np.float32)
        if len(fitted.classes_) == 2:  # one logit w·x + b: softmax over (-z/2, z/2) is its sigmoid
            weight[fitted.classes_] = np.stack([-fitted.coef_[0], fitted.coef_[0]]) / 2
            bias[fitted.classes_] = np.array([-fitted.intercept_[0], fitted.intercept_[0]]) / 2
        else:
            weight[fitted.classes_], bias[fitted.classes_] = fitted.coef_, fitted.intercept_
        linear = self.model.head[-1]  # the model's head: dropout, then this
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(weight))
            linear.bias.copy_(torch.from_numpy(bias))
        log.info("setfit head: logistic regression on %d embeddings", len(labels))
