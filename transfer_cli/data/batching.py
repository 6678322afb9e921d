"""Length-grouped batches with dynamic padding: batches hold reviews of similar length, padded to their own max."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, List, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

MEGABATCH = 50  # batches per sorting window: enough to group lengths, small enough to stay random


@dataclass
class TokenizedSet:
    """Token ids of a split; `labels` is None for unlabelled data (the target adaptation pool)."""

    ids: List[np.ndarray]
    labels: Optional[np.ndarray] = None

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def lengths(self) -> np.ndarray:
        return np.fromiter((len(i) for i in self.ids), dtype=np.int64, count=len(self.ids))


class LengthGroupedSampler(Sampler):
    """Shuffle, sort each window of MEGABATCH batches by length, cut into batches, shuffle the batch order.
    With group=False: plain random batches (the usual recipe, for comparison).
    With `batch_by` (a group id per example, e.g. its source domain): batches never mix groups.
    The order depends on (seed, epoch) only, so a resumed run sees the same batches (the loop sets the epoch).
    (No `batch_size` attribute: Accelerate's shards then treat the batches as of varying size, which they are.)"""

    def __init__(self, lengths: np.ndarray, batch_size: int, seed: int, group: bool = True,
                 batch_by: Optional[np.ndarray] = None):
        self.lengths, self.size, self.seed, self.group, self.epoch = lengths, batch_size, seed, group, 0
        self.parts = [np.arange(len(lengths))] if batch_by is None else [np.flatnonzero(batch_by == g) for g in np.unique(batch_by)]

    def __len__(self) -> int:
        return sum(-(-len(part) // self.size) for part in self.parts)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[List[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        self.epoch += 1  # used alone, the next pass reshuffles
        batches = []
        for part in self.parts:
            order = part[rng.permutation(len(part))]
            window = self.size * MEGABATCH if self.group else len(order)
            for start in range(0, len(order), window):
                chunk = order[start : start + window]
                if self.group:
                    chunk = chunk[np.argsort(-self.lengths[chunk], kind="stable")]
                batches += [chunk[i : i + self.size].tolist() for i in range(0, len(chunk), self.size)]
        for b in rng.permutation(len(batches)):
            yield batches[b]


class Collate:
    def __init__(self, data: TokenizedSet, pad_id: int):
        self.data, self.pad_id = data, pad_id

    def __call__(self, index: List[int]) -> dict:
        seqs = [self.data.ids[i] for i in index]
        width = max(len(s) for s in seqs)
        input_ids = np.full((len(seqs), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(seqs), width), dtype=np.int64)
        for row, s in enumerate(seqs):
            input_ids[row, : len(s)] = s
            mask[row, : len(s)] = 1
        batch = {"input_ids": torch.from_numpy(input_ids), "attention_mask": torch.from_numpy(mask),
                 "index": torch.tensor(index)}
        if self.data.labels is not None:
            batch["labels"] = torch.from_numpy(self.data.labels[index])
        return batch


def train_loader(data: TokenizedSet, batch_size: int, seed: int, pad_id: int, group: bool = True,
                 batch_by: Optional[np.ndarray] = None) -> DataLoader:
    sampler = LengthGroupedSampler(data.lengths, batch_size, seed, group, batch_by)
    # its own generator: iterating must not draw from the global RNG (dropout), or a resumed run would differ
    return DataLoader(range(len(data)), batch_sampler=sampler, collate_fn=Collate(data, pad_id),
                      generator=torch.Generator())


def eval_loader(data: TokenizedSet, batch_size: int, pad_id: int) -> DataLoader:
    """Batches sorted by length (longest first, so a memory problem shows at once)."""
    order = np.argsort(-data.lengths, kind="stable")
    batches = [order[i : i + batch_size].tolist() for i in range(0, len(order), batch_size)]
    # its own generator: iterating a DataLoader draws a seed, which must not shift the training RNG (dropout)
    return DataLoader(range(len(data)), batch_sampler=batches, collate_fn=Collate(data, pad_id),
                      generator=torch.Generator())
