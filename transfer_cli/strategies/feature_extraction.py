"""Feature extraction: freeze the pretrained backbone and train only a head on its pooled features
(a linear probe, or a small MLP), as in the feature-based approach of Devlin et al. (BERT, NAACL 2019, §5.3).

    min_θ CE(h_θ(F(x_s)), y_s),   F frozen

F(x) never changes, so it is computed once per example and cached on disk, keyed by the backbone's weights, the
pooling, the precision and the token ids: a second run, or a sweep over head settings, skips the backbone.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Dict, Iterable

import numpy as np
import torch
from torch import nn

from ..data.batching import TokenizedSet
from ..cache import load_entry, save_entry
from ..models import make_head
from .base import Context, Phase, Strategy, check, set_trainable

log = logging.getLogger(__name__)


class FeatureTable:
    """Looks up the cached features of each row of a batch by its token ids (padding stripped)."""

    def __init__(self):
        self.rows: Dict[bytes, torch.Tensor] = {}

    def add(self, data: TokenizedSet, features: torch.Tensor) -> None:
        for ids, row in zip(data.ids, features):
            self.rows[np.asarray(ids, dtype=np.int64).tobytes()] = row

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        ids, mask = input_ids.cpu().numpy(), attention_mask.cpu().numpy().astype(bool)
        rows = [self.rows[ids[i][mask[i]].tobytes()] for i in range(len(ids))]
        return torch.stack(rows).to(input_ids.device)


def weights_fingerprint(module: nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class FeatureExtraction(Strategy):
    name = "feature_extraction"

    @dataclass
    class Params:
        head: str = "linear"  # linear (a probe) | mlp (one hidden layer)
        hidden: int = 256  # MLP width
        epochs: int = 10  # cheap: the backbone does not run
        lr: float = 1.0e-2  # a probe on frozen features needs a larger step than fine-tuning

        def __post_init__(self):
            check(self.head in ("linear", "mlp"), f"strategy.head={self.head} must be linear or mlp")
            check(self.hidden >= 1, f"strategy.hidden={self.hidden} must be >= 1")
            check(self.epochs >= 1, f"strategy.epochs={self.epochs} must be >= 1")
            check(self.lr > 0, f"strategy.lr={self.lr} must be > 0")

    def __init__(self, params, model):
        super().__init__(params, model)
        if params.head == "mlp":
            model.head = make_head(model.feature_dim, model.num_labels, model.head.dropout, "mlp", params.hidden)
        set_trainable(model.backbone, False)

    def phases(self, data, ctx: Context) -> Iterable[Phase]:
        table = FeatureTable()
        prefix = hashlib.sha256(
            f"{weights_fingerprint(self.model.backbone)}|{self.model.pooling}|{ctx.accelerator.device.type}|"
            f"{ctx.accelerator.mixed_precision}".encode()
        ).hexdigest()
        for split in (data.source_train, data.source_val, data.target_pool, data.target_test):
            table.add(split, self._cached_features(split, prefix, ctx))
        self.model.cached_features = table
        return [Phase("head", data.source_train, self.params.epochs, lr=self.params.lr)]

    def _cached_features(self, split: TokenizedSet, prefix: str, ctx: Context) -> torch.Tensor:
        digest = hashlib.sha256(prefix.encode())
        for ids in split.ids:
            digest.update(np.asarray(ids, dtype=np.int64).tobytes())
            digest.update(b"|")
        path = ctx.cache_dir / "features" / f"{digest.hexdigest()[:32]}.npz"
        stored = load_entry(path, lambda a: len(a["features"]) == len(split))
        if stored is not None:
            log.info("features of %d examples from the cache %s", len(split), path)
            return torch.from_numpy(stored["features"])
        features = ctx.features(self.model, split)
        save_entry(path, features=features.numpy())
        return features
