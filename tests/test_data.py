"""Splits, the no-leakage protocol, the tokenization cache and length-grouped batching."""

from __future__ import annotations

import numpy as np
import torch

from transfer_cli.config import DataConfig, DomainConfig, Protocol, RunConfig
from transfer_cli.data import build_data
from transfer_cli.data.batching import LengthGroupedSampler, TokenizedSet, eval_loader, train_loader
from transfer_cli.data.tokens import tokenize


def demo_config(seed=0, protocol=Protocol.inductive, **data):
    return RunConfig(
        source={"demo_gadgets": DomainConfig(name="demo_gadgets", loader="synthetic", max_examples=300)},
        target={"demo_films": DomainConfig(name="demo_films", loader="synthetic", max_examples=200)},
        data=DataConfig(max_length=64, **data), seed=seed, protocol=protocol,
    )


def build(tokenizer, tmp_path, **kw):
    return build_data(demo_config(**kw), tokenizer, tmp_path, tmp_path / "cache")


def as_set(ids):
    return {tuple(i) for i in ids}


def unique_domain(tmp_path, name, n):
    """A files domain whose texts are all different, so splits can be compared by content."""
    rows = "\n".join(f"{name} review number {i},{i % 2}" for i in range(n))
    (tmp_path / f"{name}.csv").write_text(f"text,label\n{rows}\n")
    return DomainConfig(name=name, loader="files", path=f"{name}.csv")


def test_splits_are_deterministic_per_seed_and_disjoint(tokenizer, tmp_path):
    def build_unique(seed, protocol=Protocol.inductive):
        cfg = RunConfig(source={"a": unique_domain(tmp_path, "a", 100)}, target={"b": unique_domain(tmp_path, "b", 80)},
                        data=DataConfig(max_length=32), seed=seed, protocol=protocol)
        return build_data(cfg, tokenizer, tmp_path, tmp_path / "cache")

    a, b, c = build_unique(1), build_unique(1), build_unique(2)
    assert as_set(a.target_test.ids) == as_set(b.target_test.ids) != as_set(c.target_test.ids)
    assert a.sizes() == {"source_train_size": 80, "source_val_size": 20, "target_pool_size": 40, "target_test_size": 40}
    assert not as_set(a.target_pool.ids) & as_set(a.target_test.ids)
    assert not as_set(a.source_train.ids) & as_set(a.source_val.ids)
    # transductive: test on everything, except examples handed out with their labels
    t = build_unique(1, Protocol.transductive)
    assert as_set(t.target_test.ids) == as_set(t.target_pool.ids) and len(t.target_test) == 80
    few = t.labelled_target(10, seed=0)
    assert len(t.target_test) == 70 and not as_set(few.ids) & as_set(t.target_test.ids)


def test_pool_is_unlabelled_and_labels_are_counted(tokenizer, tmp_path):
    data = build(tokenizer, tmp_path)
    assert data.target_pool.labels is None and data.target_labels_used == 0
    few = data.labelled_target(10, seed=0)
    assert len(few) == 10 and np.bincount(few.labels).tolist() == [5, 5]
    assert data.target_labels_used == 10
    assert len(data.labelled_target(None, seed=0)) == 100 and data.target_labels_used == 100


def test_transductive_evaluates_on_all_target_data(tokenizer, tmp_path):
    data = build(tokenizer, tmp_path, protocol=Protocol.transductive)
    assert len(data.target_test) == len(data.target_pool) == 200


def test_limits(tokenizer, tmp_path):
    data = build(tokenizer, tmp_path, max_source_train=17, max_target_test=9)
    assert len(data.source_train) == 17 and len(data.target_test) == 9


def test_tokenization_cache_is_reused(tokenizer, tmp_path):
    texts = ["a short review", "another, somewhat longer review of a thing"]
    first = tokenize(texts, tokenizer, 16, tmp_path)
    files = list((tmp_path / "tokens").glob("*.npz"))
    assert len(files) == 1

    def explode(*args, **kwargs):
        raise AssertionError("tokenized again despite the cache")

    # same class name and definition as the real tokenizer, but it cannot tokenize
    exploding = type(type(tokenizer).__name__, (), {"backend_tokenizer": tokenizer.backend_tokenizer, "__call__": explode})
    second = tokenize(texts, exploding(), 16, tmp_path)
    assert [x.tolist() for x in first] == [x.tolist() for x in second]
    tokenize(texts, tokenizer, 8, tmp_path)  # another max_length is another entry
    tokenize(texts + ["new"], tokenizer, 16, tmp_path)  # other content is another entry
    assert len(list((tmp_path / "tokens").glob("*.npz"))) == 3


def test_length_grouped_batches_cover_everything_with_little_padding():
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 250, size=1000)
    data = TokenizedSet([np.ones(n, dtype=np.int32) for n in lengths], np.zeros(1000, dtype=np.int64))
    sampler = LengthGroupedSampler(lengths, 16, seed=0)
    batches = list(sampler)
    assert sorted(i for b in batches for i in b) == list(range(1000))
    assert [b for b in LengthGroupedSampler(lengths, 16, seed=0)] == batches  # deterministic
    assert list(sampler) != batches  # reshuffled next epoch
    padded = sum(len(b) * lengths[b].max() for b in batches)
    random_batches = np.array_split(rng.permutation(1000), 63)
    padded_random = sum(len(b) * lengths[b].max() for b in random_batches)
    assert padded < 0.6 * padded_random
    plain = list(LengthGroupedSampler(lengths, 16, seed=0, group=False))
    assert sorted(i for b in plain for i in b) == list(range(1000))
    assert padded < 0.6 * sum(len(b) * lengths[b].max() for b in plain)
    batch = next(iter(train_loader(data, 16, 0, pad_id=0)))
    assert batch["input_ids"].shape[1] == int(batch["attention_mask"].sum(1).max())
    evaluated = [i for b in eval_loader(data, 64, pad_id=0) for i in b["index"].tolist()]
    assert sorted(evaluated) == list(range(1000))


def test_evaluation_does_not_move_the_training_rng():
    data = TokenizedSet([np.arange(1, 5 + i % 7) for i in range(20)], np.arange(20) % 2)
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    for _ in eval_loader(data, 8, pad_id=0):
        pass
    assert torch.equal(torch.rand(3), expected)
