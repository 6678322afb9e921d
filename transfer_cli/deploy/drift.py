"""Drift: does recent traffic still look like the data the model was adapted to?

A saved model carries a reference sample of its target domain (`drift_reference.safetensors`: the pooled features and
class probabilities of up to 1000 unlabelled target-pool texts, computed by the run's final model). The service keeps
the features and probabilities of the last `window` texts it classified and, every `every` texts, compares them with
the reference:
- the proxy A-distance between window and reference (`transfer_cli.distance`, as `transfer analyze` computes it);
- the mean prediction entropy, beside the reference's;
- the predicted-class proportions, beside the reference's.
When the distance crosses `threshold` it logs one warning (and one line when it falls back). The default threshold
comes from measurements: docs/results.md#drift.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from ..distance import proxy_a_distance
from ..outputs import REFERENCE_FILE

DEFAULT_THRESHOLD = 0.4  # the distance over which traffic counts as drifted: docs/results.md#drift
log = logging.getLogger("transfer.drift")


def load_reference(folder: Path) -> Optional[Dict[str, np.ndarray]]:
    from safetensors.numpy import load_file

    path = folder / REFERENCE_FILE
    return load_file(str(path)) if path.exists() else None


def mean_entropy(probabilities: np.ndarray) -> float:
    return float(-(probabilities * np.log(np.clip(probabilities, 1e-12, 1))).sum(1).mean())


class DriftMonitor:
    def __init__(self, reference: Dict[str, np.ndarray], labels: List[str], window: int = 500, every: int = 100,
                 threshold: float = DEFAULT_THRESHOLD, seed: int = 0):
        self.reference, self.labels = reference, labels
        self.window, self.every, self.threshold, self.seed = window, every, threshold, seed
        self.features: deque = deque(maxlen=window)
        self.probabilities: deque = deque(maxlen=window)
        self.since_check = 0
        self.lock = threading.Lock()
        self.state: Dict = {"status": f"collecting: fewer than {window} texts seen", "window_texts": 0,
                            "threshold": threshold, "alert": False,
                            "reference_texts": len(reference["features"]),
                            "reference_entropy": mean_entropy(reference["probabilities"]),
                            "reference_class_share": self._shares(reference["probabilities"])}

    def _shares(self, probabilities: np.ndarray) -> Dict[str, float]:
        counts = np.bincount(probabilities.argmax(1), minlength=len(self.labels))
        return {label: float(c / max(1, len(probabilities))) for label, c in zip(self.labels, counts)}

    def observe(self, features: np.ndarray, probabilities: np.ndarray) -> None:
        """Add classified texts; once the window is full, compare it with the reference every `every` texts."""
        with self.lock:
            self.features.extend(features)
            self.probabilities.extend(probabilities)
            self.since_check += len(features)
            if len(self.features) < self.window or self.since_check < self.every:
                self.state["window_texts"] = len(self.features)
                return
            self.since_check = 0
            window_features, window_probabilities = np.array(self.features), np.array(self.probabilities)
        self._compare(window_features, window_probabilities)

    def _compare(self, features: np.ndarray, probabilities: np.ndarray) -> None:
        pad = proxy_a_distance(features, self.reference["features"], self.seed)
        alert = pad > self.threshold
        if alert and not self.state["alert"]:
            log.warning("recent traffic differs from the data this model was adapted to (PAD %.2f > %.2f): "
                        "collect it and transfer again", pad, self.threshold)
        elif self.state["alert"] and not alert:
            log.warning("recent traffic looks like the adapted domain again (PAD %.2f <= %.2f)", pad, self.threshold)
        with self.lock:
            self.state.update(status="drift" if alert else "ok", alert=alert, pad=pad, window_texts=len(features),
                              entropy=mean_entropy(probabilities), class_share=self._shares(probabilities))

    def report(self) -> Dict:
        with self.lock:
            return dict(self.state)
