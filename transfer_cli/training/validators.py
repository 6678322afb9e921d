"""Label-free validators: how good is a checkpoint on the target, judged without target labels?

Each is computed every epoch from the model's outputs on the source validation split (labelled) and on a fixed
subset of the unlabelled target pool, and stored in `history.csv`. `selection=NAME` picks checkpoints with one of them.

- `source_val`: source-validation accuracy. Higher is better.
- `entropy`: mean prediction entropy on the target, H = -Σ_c p_c log p_c (Grandvalet & Bengio 2005; the "Ent"
  baseline of Morerio et al. 2018 and Saito et al. 2021). Confident target predictions score well; lower is better.
- `snd`: soft neighbourhood density (Saito et al., ICCV 2021). Cosine similarities s_ij of the L2-normalised target
  softmax outputs, self-pairs excluded, p_ij = softmax_j(s_ij / τ) with τ = 0.05, SND = mean_i H(p_i.). Target
  points with many close neighbours (dense, clustered predictions) score well; higher is better.
- `dev`: deep embedded validation (You et al., ICML 2019), the source-validation loss importance-weighted towards
  the target, with a control variate. A domain classifier on the pooled features gives the density ratio
  w(x) = (n_s / n_t) · P(target | x) / P(source | x) on each source-validation example; with L = w · ℓ(y, ŷ),
  η = -Cov(L, w) / Var(w) and DEV = mean(L) + η · mean(w) - η. An estimate of the target risk; lower is better.
  Our convention: the classifier is a logistic regression on standardised features of the source-validation and
  target examples, cross-fitted over two folds so that no example is weighted by a classifier that saw it.

Selection maximises `sign · column`, so every validator reads "higher is better" there.
"""

from __future__ import annotations

from typing import Dict, Tuple

import numpy as np
import torch
import torch.nn.functional as F

# name -> (history column, sign: +1 higher is better, -1 lower is better)
VALIDATORS: Dict[str, Tuple[str, int]] = {
    "source_val": ("source_val_accuracy", +1),
    "entropy": ("target_entropy", -1),
    "snd": ("target_snd", +1),
    "dev": ("dev_risk", -1),
}


def score(validator: str, row: Dict[str, float]) -> float:
    """The validator's value in a history row, signed so that higher is better."""
    column, sign = VALIDATORS[validator]
    return sign * row[column]


def prediction_entropy(probabilities: torch.Tensor) -> float:
    return float(-(probabilities * probabilities.clamp_min(1e-12).log()).sum(-1).mean())


def soft_neighbourhood_density(probabilities: torch.Tensor, temperature: float = 0.05, chunk: int = 1024) -> float:
    if len(probabilities) < 2:
        return float("nan")  # no neighbours
    normalised = F.normalize(probabilities.float(), dim=-1)
    entropies = []
    for start in range(0, len(normalised), chunk):  # n × chunk similarities at a time, not n × n
        rows = normalised[start : start + chunk]
        similarity = rows @ normalised.T
        similarity[torch.arange(len(rows)), torch.arange(start, start + len(rows))] = -torch.inf  # no self-pairs
        entropies.append(prediction_entropy((similarity / temperature).softmax(-1)) * len(rows))
    return sum(entropies) / len(normalised)


def deep_embedded_validation(source_features: torch.Tensor, source_losses: torch.Tensor,
                             target_features: torch.Tensor, seed: int = 0) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if min(len(source_features), len(target_features)) < 2:
        return float("nan")  # two folds need two examples of each domain
    x = torch.cat([source_features, target_features]).float().numpy()
    domain = np.r_[np.zeros(len(source_features)), np.ones(len(target_features))]
    p_target = np.empty(len(x))
    for fit, held_out in StratifiedKFold(2, shuffle=True, random_state=seed).split(x, domain):
        classifier = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
        classifier.fit(x[fit], domain[fit])
        p_target[held_out] = classifier.predict_proba(x[held_out])[:, 1]
    p = np.clip(p_target[: len(source_features)], 1e-6, 1 - 1e-6)
    weights = len(source_features) / len(target_features) * p / (1 - p)
    weighted = weights * source_losses.float().numpy()
    variance = weights.var(ddof=1)
    eta = -np.cov(weighted, weights)[0, 1] / variance if variance > 0 else 0.0
    return float(weighted.mean() + eta * weights.mean() - eta)


def validate(source_logits: torch.Tensor, source_features: torch.Tensor, source_labels: np.ndarray,
             target_logits: torch.Tensor, target_features: torch.Tensor, seed: int) -> Dict[str, float]:
    """The target-side validators of one checkpoint (source-validation accuracy is scored with the other metrics)."""
    target_probabilities = target_logits.float().softmax(-1)
    source_losses = F.cross_entropy(source_logits.float(), torch.as_tensor(source_labels), reduction="none")
    return {
        "target_entropy": prediction_entropy(target_probabilities),
        "target_snd": soft_neighbourhood_density(target_probabilities),
        "dev_risk": deep_embedded_validation(source_features, source_losses, target_features, seed),
    }
