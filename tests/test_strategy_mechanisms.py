"""Each strategy's defining mechanism, proven on its real class (`build_strategy`) and the tiny model: what it trains
on, with which labels, which parameters move, and which way its own loss term pushes. Each test fails when the
term is deleted or its sign flipped."""

from __future__ import annotations

import copy
from collections import defaultdict

import pytest
import torch
import torch.nn.functional as F

from transfer_cli.data import build_data
from transfer_cli.data.batching import Collate, TokenizedSet
from transfer_cli.models import build_model, model_config
from transfer_cli.strategies import Phase, build_strategy

from .test_data import unique_domain
from .test_strategies import batch, changed, fit, small_run, snapshot, tiny


def domains_run(tmp_path, sources=("a",), n=60):
    """small_run on domains whose reviews read "NAME review number i" with label i % 2: every example is unique,
    and its domain and true label can be read off its text."""
    cfg = small_run(tmp_path)
    cfg.source = {name: unique_domain(tmp_path, name, n) for name in sources}
    cfg.target = {"t": unique_domain(tmp_path, "t", n)}
    return cfg


def content(split):
    return {tuple(ids.tolist()) for ids in split.ids}


def true_label(tokenizer, ids):
    return int(tokenizer.decode(ids, skip_special_tokens=True).split()[-1]) % 2


class Recorder:
    """What the loop hands the strategy: per phase, each labelled batch as (token ids, label) pairs, how many
    unlabelled batches came beside them, and the Phase objects themselves."""

    def __init__(self, strategy):
        self.batches, self.unlabelled, self.phases = defaultdict(list), defaultdict(int), {}
        forward, start_phase = strategy.forward, strategy.start_phase

        def recording_forward(labelled, unlabelled, progress):
            rows = [tuple(ids[mask.bool()].tolist()) for ids, mask in zip(labelled["input_ids"], labelled["attention_mask"])]
            self.batches[strategy.phase].append(list(zip(rows, labelled["labels"].tolist())))
            self.unlabelled[strategy.phase] += unlabelled is not None
            return forward(labelled, unlabelled, progress)

        def recording_start_phase(phase):
            self.phases[phase.name] = phase
            start_phase(phase)

        strategy.forward, strategy.start_phase = recording_forward, recording_start_phase

    def examples(self, phase):
        return [example for b in self.batches[phase] for example in b]


def flat_grad(params):
    return torch.cat([p.grad.flatten() if p.grad is not None else torch.zeros(p.numel()) for p in params])


def gradient(strategy, labelled, unlabelled, params):
    """The gradient of the strategy's current loss on `params` (flattened), and its logs."""
    strategy.zero_grad()
    loss, logs = strategy(labelled, unlabelled, 0.0)
    loss.backward()
    return flat_grad(params), logs


# --- which data and labels each phase trains on ------------------------------------------------------------------

def test_source_only_trains_on_every_source_label_and_never_sees_target_text(tokenizer, ctx, tmp_path):
    """One epoch of source_only hands the strategy each source-train example once, with its true label, and no
    target batch, labelled or not."""
    strategy = build_strategy({"name": "source_only"}, tiny(tokenizer))
    seen = Recorder(strategy)
    _, _, data = fit(strategy, tokenizer, ctx, domains_run(tmp_path), tmp_path)
    assert list(seen.batches) == ["train"]
    examples = seen.examples("train")
    assert sorted(ids for ids, _ in examples) == sorted(content(data.source_train))
    assert all(label == true_label(tokenizer, ids) for ids, label in examples)
    assert seen.unlabelled["train"] == 0 and data.target_labels_used == 0


def test_target_oracle_trains_and_selects_on_disjoint_parts_of_the_labelled_target_pool(tokenizer, ctx, tmp_path):
    """target_oracle trains on the target pool with its true labels, never on source text, and selects its
    checkpoint on a held-out part of the pool that it does not train on."""
    strategy = build_strategy({"name": "target_oracle", "val_fraction": 0.25}, tiny(tokenizer))
    seen = Recorder(strategy)
    _, result, data = fit(strategy, tokenizer, ctx, domains_run(tmp_path), tmp_path)
    examples = seen.examples("target")
    trained, val = {ids for ids, _ in examples}, content(seen.phases["target"].val)
    assert trained | val == content(data.target_pool) and not trained & val
    assert len(val) == len(data.target_pool) // 4 and not trained & content(data.source_train)
    assert all(label == true_label(tokenizer, ids) for ids, label in examples)
    val_set = seen.phases["target"].val
    assert [int(y) for y in val_set.labels] == [true_label(tokenizer, ids) for ids in val_set.ids]
    assert result.history[-1]["selection"] == "target_val" and data.target_labels_used == len(data.target_pool)


def test_finetune_trains_on_source_then_on_exactly_k_target_labels_outside_the_test_split(tokenizer, ctx, tmp_path):
    """finetune's first phase trains on the source labels; its second trains the model on exactly k labelled
    target examples from the pool (never the test split), with their true labels, every epoch."""
    strategy = build_strategy({"name": "finetune", "k": 10, "target_epochs": 2}, tiny(tokenizer))
    seen = Recorder(strategy)
    starts, _, data = fit(strategy, tokenizer, ctx, domains_run(tmp_path), tmp_path)
    source, few = seen.examples("source"), seen.examples("target_k_shot")
    assert sorted(ids for ids, _ in source) == sorted(content(data.source_train))
    shots = {ids for ids, _ in few}
    assert len(shots) == 10 and len(few) == 2 * 10
    assert shots <= content(data.target_pool) and not shots & content(data.target_test)
    assert all(label == true_label(tokenizer, ids) for ids, label in source + few)
    assert data.target_labels_used == 10
    assert changed(starts["target_k_shot"], snapshot(strategy), "model.backbone.")


class Unreadable:
    """Labels that fail the test when anything reads them."""

    def _read(self, *args, **kwargs):
        raise AssertionError("self-training read target labels")

    __getitem__ = __len__ = __iter__ = __array__ = _read


def test_self_training_pseudo_labels_are_the_current_models_predictions_not_target_labels(tokenizer, ctx, tmp_path):
    """Each round labels the pool with the model as it is at that round (here: all class 0, then all class 1),
    without reading a target label of the pool or of the test split; a round where no prediction reaches the
    threshold (a model that outputs 50/50) ends the rounds."""
    data = build_data(domains_run(tmp_path), tokenizer, tmp_path, tmp_path / "cache")
    data._pool_labels = data.target_test.labels = Unreadable()
    strategy = build_strategy({"name": "self_training", "rounds": 3, "threshold": 0.9, "balance": False},
                              tiny(tokenizer))
    phases = strategy.phases(data, ctx)
    assert next(phases).train is data.source_train
    n_source = len(data.source_train)
    for predicted in (0, 1):
        with torch.no_grad():
            strategy.model.head[1].bias.copy_(torch.tensor([5.0, -5.0] if predicted == 0 else [-5.0, 5.0]))
        round_ = next(phases)
        assert [tuple(i) for i in round_.train.ids[n_source:]] == [tuple(i) for i in data.target_pool.ids]
        assert round_.train.labels[n_source:].tolist() == [predicted] * len(data.target_pool)
        assert round_.train.labels[:n_source].tolist() == data.source_train.labels.tolist()
    with torch.no_grad():
        strategy.model.head[1].weight.zero_()
        strategy.model.head[1].bias.zero_()
    assert next(phases, None) is None
    assert data.target_labels_used == 0


# --- which parameters train ---------------------------------------------------------------------------------------

def test_feature_extraction_head_learns_from_the_frozen_backbones_own_features(tokenizer, ctx, tmp_path):
    """After phases(), the backbone cannot train, every split's cached features are the backbone's encoding of that
    very example (padding and batch order notwithstanding), and the loss reaches the head only."""
    data = build_data(small_run(tmp_path), tokenizer, tmp_path, tmp_path / "cache")
    strategy = build_strategy({"name": "feature_extraction"}, tiny(tokenizer))
    strategy.phases(data, ctx)
    model = strategy.model.eval()
    assert not any(p.requires_grad for p in model.backbone.parameters())
    for split in (data.source_train, data.source_val, data.target_pool, data.target_test):
        rows = Collate(split, tokenizer.pad_token_id)(list(range(len(split)))[::-1])
        assert torch.allclose(model.features(**rows), model.encode(rows["input_ids"], rows["attention_mask"]), atol=1e-5)
    labelled = Collate(data.source_train, tokenizer.pad_token_id)(list(range(16)))
    strategy(labelled, None, 0.0)[0].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.head.parameters())
    assert all(p.grad is None for p in model.backbone.parameters())


# --- discrepancy terms --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, weight, lr", [("mmd", 10.0, 3e-4), ("coral", 1e5, 1e-3)], ids=["mmd", "coral"])
def test_a_step_on_the_discrepancy_loss_brings_source_and_target_features_closer(tokenizer, name, weight, lr):
    """One SGD step on the strategy's loss with a large discrepancy weight lowers the discrepancy between the
    source and target features by a fifth or more; the same step with weight 0 (the task loss alone) does not."""
    source = batch(n=16)
    g = torch.Generator().manual_seed(1)
    target = {"input_ids": torch.randint(5000, 6000, (16, 20), generator=g),
              "attention_mask": torch.ones(16, 20, dtype=torch.long)}
    after = {}
    for w in (0.0, weight):
        strategy = build_strategy({"name": name, "weight": w}, tiny(tokenizer)).eval()
        _, logs = strategy(source, target, 0.0)
        before = logs[name]
        loss, _ = strategy(source, target, 0.0)
        loss.backward()
        torch.optim.SGD(strategy.parameters(), lr=lr).step()
        after[w] = strategy(source, target, 0.0)[1][name]
    assert after[weight] < 0.8 * before and after[weight] < 0.8 * after[0.0]


# --- distillation -------------------------------------------------------------------------------------------------

def student_and_teacher(tokenizer, same: bool, **params):
    """distill in its student phase, on a student built like the teacher; `same`: the teacher holds the
    student's weights."""
    torch.manual_seed(0)
    student = build_model(model_config("tiny"), 2, len(tokenizer))
    strategy = build_strategy({"name": "distill", "teacher": "tiny", **params}, student)
    if same:
        strategy.teacher.load_state_dict(student.state_dict())
    strategy.start_phase(Phase("student", TokenizedSet([]), 1))
    return strategy.eval()


def test_distill_gradient_vanishes_at_the_teacher_and_a_step_moves_the_student_towards_it(tokenizer):
    """With only the KD term (alpha=0), a student equal to its teacher gets no gradient; a different one does, and
    one SGD step lowers its KD loss."""
    source, target = batch(), batch(seed=1, labels=False)
    same = student_and_teacher(tokenizer, same=True, alpha=0.0)
    params = list(same.model.parameters())
    grad, logs = gradient(same, source, target, params)
    assert logs["kd_loss"] < 1e-5 and grad.abs().max() < 1e-6

    other = student_and_teacher(tokenizer, same=False, alpha=0.0)
    grad, logs = gradient(other, source, target, list(other.model.parameters()))
    assert grad.abs().max() > 1e-3
    torch.optim.SGD(other.model.parameters(), lr=1e-3).step()
    assert other(source, target, 0.0)[1]["kd_loss"] < 0.9 * logs["kd_loss"]


def test_distill_loss_is_alpha_hard_labels_plus_kd_on_source_and_target_text(tokenizer):
    """The student's gradient is alpha * (hard-label gradient) + (1 - alpha) * (KD gradient): the KD part is
    non-zero, does not depend on the labels, and depends on the unlabelled target text."""
    source, target, other_target = batch(), batch(seed=1, labels=False), batch(seed=2, labels=False)
    strategy = student_and_teacher(tokenizer, same=False)
    params = list(strategy.model.parameters())
    grads = {}
    for alpha in (0.0, 0.5, 1.0):
        strategy.params.alpha = alpha
        grads[alpha], _ = gradient(strategy, source, target, params)
    assert torch.allclose(grads[0.5], 0.5 * grads[1.0] + 0.5 * grads[0.0], atol=1e-6)
    assert (grads[0.5] - 0.5 * grads[1.0]).abs().max() > 1e-3

    strategy.params.alpha = 0.0
    flipped = {**source, "labels": 1 - source["labels"]}
    assert torch.allclose(gradient(strategy, flipped, target, params)[0], grads[0.0], atol=1e-7)
    assert (gradient(strategy, source, other_target, params)[0] - grads[0.0]).abs().max() > 1e-4


# --- MAML ---------------------------------------------------------------------------------------------------------

def test_maml_meta_phase_runs_its_meta_loss_on_single_domain_batches(tokenizer, ctx, tmp_path):
    """In the real loop, every meta-phase batch comes from one source domain (both domains are used), the phase
    trains with the meta loss (support and query losses logged), then k target examples are fine-tuned on."""
    strategy = build_strategy({"name": "maml", "k": 10, "target_epochs": 1}, tiny(tokenizer))
    seen = Recorder(strategy)
    _, result, data = fit(strategy, tokenizer, ctx, domains_run(tmp_path, sources=("a", "b")), tmp_path)
    domains = [{ids[1] for ids, _ in b} for b in seen.batches["meta"]]
    assert all(len(d) == 1 for d in domains) and len(set.union(*domains)) == 2
    assert sum(len(b) for b in seen.batches["meta"]) == len(data.source_train)
    assert [row["phase"] for row in result.history] == ["meta", "target_k_shot"]
    assert {"support_loss", "query_loss"} <= set(result.history[0])
    assert len({ids for ids, _ in seen.examples("target_k_shot")}) == 10 == data.target_labels_used


def test_maml_query_loss_is_taken_after_a_first_order_inner_step(tokenizer, ctx, tmp_path):
    """With support == query, the meta phase's loss (through the strategy's own Phase) is the plain loss when
    inner_lr = 0 and lower when inner_lr > 0, and its gradient on θ is the query gradient at θ' = one SGD step of
    inner_lr on the support loss (first order), not the gradient at θ."""
    data = build_data(domains_run(tmp_path, sources=("a", "b")), tokenizer, tmp_path, tmp_path / "cache")
    half = batch(n=4)
    twice = {k: torch.cat([v, v]) for k, v in half.items()}
    losses = {}
    for inner_lr in (0.0, 1e-3):
        strategy = build_strategy({"name": "maml", "inner_lr": inner_lr}, tiny(tokenizer)).eval()
        strategy.start_phase(next(iter(strategy.phases(data, ctx))))
        model = strategy.model
        plain = F.cross_entropy(model(**half), half["labels"]).item()
        params = [p for p in model.parameters() if p.requires_grad]
        meta_grad, logs = gradient(strategy, twice, None, params)
        losses[inner_lr] = logs["query_loss"]

    assert losses[0.0] == pytest.approx(plain, rel=1e-5)
    assert losses[1e-3] < plain - 1e-3
    adapted = copy.deepcopy(model)
    adapted.zero_grad()
    F.cross_entropy(adapted(**half), half["labels"]).backward()
    at_theta = flat_grad(adapted.parameters())
    torch.optim.SGD(adapted.parameters(), lr=1e-3).step()
    adapted.zero_grad()
    F.cross_entropy(adapted(**half), half["labels"]).backward()
    at_adapted = flat_grad(adapted.parameters())
    assert torch.allclose(meta_grad, at_adapted, atol=1e-5)
    assert (at_adapted - at_theta).abs().max() > 1e-2
