"""Domains -> deterministic splits -> token ids.

The protocol (no target-label leakage by default):
- source: train / validation (stratified, per split seed: `data.split_seed`, else the run's `seed`);
- target, inductive: an adaptation pool (its labels hidden) and a disjoint labelled test split;
- target, transductive: the pool and the test split are both all of the target data, except that target examples
  handed out with their labels (few-shot, oracle) leave the test split.
Target labels of the pool are handed out only through `RunData.labelled_target`, which counts them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
from sklearn.model_selection import train_test_split

from ..errors import TransferError
from .batching import TokenizedSet
from .loaders import Examples, load_domain
from .tokens import tokenize


@dataclass
class RunData:
    source_train: TokenizedSet
    source_val: TokenizedSet
    target_pool: TokenizedSet  # unlabelled
    target_test: TokenizedSet
    _pool_labels: np.ndarray = field(repr=False, default=None)
    transductive: bool = False  # the pool and the test split are the same examples, in the same order
    _handed_out: set = field(repr=False, default_factory=set)
    target_labels_used: int = 0
    num_labels: int = 2
    source_domain: Optional[np.ndarray] = None  # index into source_names, per source_train example
    source_names: List[str] = field(default_factory=list)
    target_validation: Optional[TokenizedSet] = None  # a fixed subset of the pool, for the label-free validators
    target_domain: Optional[Any] = None  # the target's DomainConfig (labels, their descriptions)

    def labelled_target(self, k: Optional[int], seed: int) -> TokenizedSet:
        """k class-balanced labelled examples from the target pool (all of it when k is None). Counted."""
        labels = self._pool_labels
        if k is not None and k > len(labels):
            raise TransferError(f"strategy.k={k} is more than the {len(labels)} texts of the target pool; lower "
                                "strategy.k, or raise data.max_target_pool")
        if k is None or k == len(labels):
            index = np.arange(len(labels))
        else:
            rng = np.random.default_rng(seed)
            classes = np.unique(labels)
            per_class = [rng.permutation(np.flatnonzero(labels == c)) for c in classes]
            index = np.concatenate([p[: k // len(classes) + (i < k % len(classes))] for i, p in enumerate(per_class)])
        self.target_labels_used = max(self.target_labels_used, len(index))
        if self.transductive:  # never test on an example trained with its label
            self._handed_out.update(index.tolist())
            keep = np.array([i for i in range(len(labels)) if i not in self._handed_out], dtype=np.int64)
            if len(keep) == 0:
                raise TransferError("this strategy trains on every target label, so protocol=transductive leaves "
                                    "nothing to test on; use protocol=inductive")
            self.target_test = TokenizedSet([self.target_pool.ids[i] for i in keep], labels[keep])
        return TokenizedSet([self.target_pool.ids[i] for i in index], labels[index])

    def sizes(self) -> Dict[str, int]:
        return {"source_train_size": len(self.source_train), "source_val_size": len(self.source_val),
                "target_pool_size": len(self.target_pool), "target_test_size": len(self.target_test)}


MIN_PER_CLASS = 10  # texts of each class a domain needs: fewer, and its held-out splits measure nothing


def _split(ex: Examples, fraction: float, seed: int):
    counts = np.bincount(ex.labels)
    rare = int(np.argmin(np.where(counts > 0, counts, len(ex))))
    if counts[rare] < MIN_PER_CLASS:
        raise TransferError(f"domain '{ex.domain}' is too small to split: {counts[rare]} text(s) of class {rare}, "
                            f"{len(ex)} in all; every class present needs at least {MIN_PER_CLASS}, so that each "
                            "held-out split measures something: add data")
    index = np.arange(len(ex))
    stratify = ex.labels if counts[counts > 0].min() >= 2 else None
    try:
        a, b = train_test_split(index, test_size=fraction, random_state=seed, stratify=stratify)
    except ValueError as e:
        raise TransferError(f"domain '{ex.domain}' is too small to split ({len(ex)} examples): {e}") from None
    return a, b


def _limit(index: np.ndarray, limit: Optional[int]) -> np.ndarray:
    return index if limit is None else index[:limit]


def split_seed(cfg) -> int:
    """The seed of every split: data.split_seed, else the run's seed."""
    return cfg.seed if cfg.data.split_seed is None else cfg.data.split_seed


def split_digest(split: TokenizedSet) -> str:
    """A fingerprint of a labelled split (its token ids and labels, in order): runs whose test splits have the same
    digest were tested on the same examples, which `transfer ensemble` requires of its members."""
    h = hashlib.sha256()
    for ids in split.ids:
        h.update(np.asarray(ids, dtype=np.int64).tobytes())
        h.update(b"|")
    h.update(np.asarray(split.labels, dtype=np.int64).tobytes())
    return h.hexdigest()[:16]


def _target_split(ex: Examples, cfg) -> Tuple[np.ndarray, np.ndarray]:
    """The target's (pool, test) indices: a held-out split, or (transductive) the same examples twice."""
    d = cfg.data
    if cfg.protocol == "transductive":
        pool = test = _limit(np.random.default_rng(split_seed(cfg)).permutation(len(ex)), d.max_target_test)
    else:
        pool, test = _split(ex, d.target_test_fraction, split_seed(cfg))
        pool, test = _limit(pool, d.max_target_pool), _limit(test, d.max_target_test)
    return pool, test


def target_test_texts(cfg, data_dir: Path) -> Tuple[List[str], np.ndarray]:
    """The raw texts and labels of a run's target test split (to check an exported model on what the run tested)."""
    (target,) = cfg.target.values()
    ex = load_domain(target, data_dir)
    _, test = _target_split(ex, cfg)
    return [ex.texts[i] for i in test], ex.labels[test]


def build_data(cfg, tokenizer, data_dir: Path, cache_dir: Path) -> RunData:
    """Load every source and the target domain, split them for the split seed (`split_seed`), and tokenize (cached)."""
    data_dir, cache_dir = Path(data_dir).expanduser(), Path(cache_dir).expanduser()  # `~` from a config or a caller
    d = cfg.data
    tokens = lambda ex: tokenize(ex.texts, tokenizer, d.max_length, cache_dir)  # noqa: E731

    train_ids: List[np.ndarray] = []
    train_labels, val_ids, val_labels, train_domain = [], [], [], []
    for number, domain in enumerate(cfg.source.values()):
        ex = load_domain(domain, data_dir)
        ids = tokens(ex)
        tr, va = _split(ex, d.source_val_fraction, split_seed(cfg))
        tr, va = _limit(tr, d.max_source_train), _limit(va, d.max_source_val)
        train_ids += [ids[i] for i in tr]
        val_ids += [ids[i] for i in va]
        train_labels.append(ex.labels[tr])
        train_domain.append(np.full(len(tr), number))
        val_labels.append(ex.labels[va])

    (target,) = cfg.target.values()
    ex = load_domain(target, data_dir)
    ids = tokens(ex)
    transductive = cfg.protocol == "transductive"
    pool, test = _target_split(ex, cfg)
    validation = np.sort(np.random.default_rng(split_seed(cfg)).permutation(len(pool))[: d.max_target_validation])
    return RunData(
        source_train=TokenizedSet(train_ids, np.concatenate(train_labels)),
        source_val=TokenizedSet(val_ids, np.concatenate(val_labels)),
        target_pool=TokenizedSet([ids[i] for i in pool]),
        target_test=TokenizedSet([ids[i] for i in test], ex.labels[test]),
        _pool_labels=ex.labels[pool],
        transductive=transductive,
        num_labels=len(target.labels),
        source_domain=np.concatenate(train_domain),
        source_names=[domain.name for domain in cfg.source.values()],
        target_validation=TokenizedSet([ids[pool[i]] for i in validation]),
        target_domain=target,
    )
