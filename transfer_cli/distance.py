"""The proxy A-distance (Ben-David et al. 2007): how well a linear classifier tells two feature samples apart.
Shared by `transfer analyze` (source vs target, before and after training) and the served model's drift monitor
(recent traffic vs the target sample stored with the model).

PAD = 2(1 - 2e), e = the test error of a logistic regression on standardised features, trained on a stratified half
of an equal-size sample of each side and scored on the other half; e -> 1 - e when e > 0.5. 0: the samples look
alike; 2: they are perfectly separable.
"""

from __future__ import annotations

import numpy as np


def proxy_a_distance(source: np.ndarray, target: np.ndarray, seed: int = 0) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(seed)
    n = min(len(source), len(target))
    x = np.vstack([source[rng.permutation(len(source))[:n]], target[rng.permutation(len(target))[:n]]])
    y = np.repeat([0, 1], n)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.5, stratify=y, random_state=seed)
    classifier = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
    error = 1.0 - classifier.fit(x_train, y_train).score(x_test, y_test)
    error = min(error, 1.0 - error)
    return 2.0 * (1.0 - 2.0 * error)
