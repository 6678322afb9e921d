"""What the strategies do, proven on the tiny model: gradient reversal, DANN's schedule, and who sees target labels."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from transfer_cli.data import build_data
from transfer_cli.losses import GradientReversal, dann_lambda
from transfer_cli.strategies import Phase, build_strategy

from .test_data import demo_config
from .test_strategies import batch, changed, snapshot


def test_gradient_reversal_flips_and_scales_gradients():
    x = torch.randn(4, 3, requires_grad=True)
    w = torch.randn(4, 3)
    (GradientReversal()(x, 0.5) * w).sum().backward()
    assert torch.allclose(x.grad, -0.5 * w)
    y = x.detach().clone().requires_grad_()
    assert torch.equal(GradientReversal()(y, 0.5), y)  # identity forward


def test_dann_lambda_schedule():
    assert dann_lambda(0.0) == 0.0
    assert dann_lambda(1.0) == pytest.approx(2 / (1 + math.exp(-10)) - 1)
    values = [dann_lambda(p / 10) for p in range(11)]
    assert values == sorted(values) and values[-1] > 0.99


def term_gradient(strategy, source, target, weight="weight"):
    """The gradient of one weighted term of the strategy's loss alone: that of its loss with the term's weight at 1
    minus that at 0. Random draws (MLM masks) repeat: both passes start from seed 0."""
    def gradient(value):
        setattr(strategy.params, weight, value)
        strategy.zero_grad()
        torch.manual_seed(0)
        strategy(source, target, progress=1.0)[0].backward()
        return {n: p.grad.clone() for n, p in strategy.named_parameters() if p.grad is not None}

    full, rest = gradient(1.0), gradient(0.0)
    return {n: g - rest.get(n, torch.zeros_like(g)) for n, g in full.items()}


def step(strategy, part: str, gradient: dict, size: float = 0.05) -> None:
    """One plain gradient-descent step on the parameters whose names start with `part`."""
    with torch.no_grad():
        for n, p in strategy.named_parameters():
            if n.startswith(part) and n in gradient:
                p.sub_(size * gradient[n])


@pytest.mark.parametrize("name", ["dann", "cdan"])
def test_the_encoder_ascends_the_domain_loss_that_the_discriminator_descends(tiny_model, name):
    """A step along the real strategy's domain-term gradient makes the discriminator better when it moves the
    discriminator, and worse when it moves the encoder (the gradient reversal): min over D, max over the encoder."""
    torch.manual_seed(0)
    strategy = build_strategy({"name": name}, tiny_model).eval()  # no dropout; BatchNorm on its running stats
    source, target = batch(), batch(seed=1, labels=False)
    gradient = term_gradient(strategy, source, target)
    before = strategy(source, target, progress=1.0)[1]["domain_loss"]
    state = snapshot(strategy)
    change = {}
    for part in ("discriminator.", "model.backbone."):
        step(strategy, part, gradient)
        change[part] = strategy(source, target, progress=1.0)[1]["domain_loss"] - before
        strategy.load_state_dict(state)
    assert change["discriminator."] < -1e-4 and change["model.backbone."] > 1e-4


def adapting(name, model, **params):
    """An ADDA-family strategy in its adaptation phase, its source model a frozen copy of `model`."""
    strategy = build_strategy({"name": name, **params}, model)
    strategy.source_model = copy.deepcopy(model)
    strategy.freeze(strategy.source_model)
    strategy.start_phase(Phase("adapt", None, 1, loss=strategy.adapt_loss, frozen=[model.head]))
    return strategy.eval()


@pytest.mark.parametrize("name", ["adda", "aad"])
def test_adda_discriminator_loss_reaches_only_d_and_the_encoder_loss_only_the_encoder(tiny_model, name):
    strategy = adapting(name, tiny_model)
    source, target = batch(), batch(seed=1, labels=False)
    d_loss, m_loss, _ = strategy.adversarial(tiny_model.features(**source), tiny_model.features(**target))
    for loss, reaches, spared in ((d_loss, "discriminator.", "model."), (m_loss, "model.backbone.", "discriminator.")):
        strategy.zero_grad()
        loss.backward(retain_graph=True)
        grads = {n: p.grad for n, p in strategy.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
        assert any(n.startswith(reaches) for n in grads) and not any(n.startswith(spared) for n in grads)


def realness(strategy, model, text) -> float:
    """D's mean logit on the model's features of `text`: above 0 reads as real (source)."""
    with torch.no_grad():
        return strategy.discriminator(torch.tanh(model.features(**text))).mean().item()


def loss_gradient(strategy, source, target) -> dict:
    strategy.zero_grad()
    strategy(source, target, progress=0.0)[0].backward()
    return {n: p.grad for n, p in strategy.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("name", ["adda", "aad"])
def test_adda_discriminator_step_tells_source_text_from_target_text(tiny_model, name):
    """D's side of the game: a step on D makes it call source text more real than target text than before."""
    torch.manual_seed(0)
    strategy = adapting(name, tiny_model)
    source, target = batch(), batch(seed=1, labels=False)
    margin = lambda: realness(strategy, tiny_model, source) - realness(strategy, tiny_model, target)  # noqa: E731
    before = margin()
    step(strategy, "discriminator.", loss_gradient(strategy, source, target))
    assert margin() > before + 1e-4


@pytest.mark.parametrize("name", ["adda", "aad"])
def test_adda_encoder_step_makes_target_text_look_real_to_the_discriminator(tiny_model, name):
    """The inverted labels: the target encoder moves so that D calls its features of target text real (source)."""
    torch.manual_seed(0)
    strategy = adapting(name, tiny_model)
    source, target = batch(), batch(seed=1, labels=False)
    before = realness(strategy, tiny_model, target)
    step(strategy, "model.backbone.", loss_gradient(strategy, source, target))
    assert realness(strategy, tiny_model, target) > before + 1e-4


def test_adda_adaptation_groups_follow_the_reference(tokenizer, tiny_model, tmp_path, ctx):
    """D and the target encoder: Adam (no decay) at a constant adapt_lr; the encoder clipped and (ADDA) gated on
    D's accuracy; D (AAD) clamped to ±0.01."""
    data = build_data(demo_config(), tokenizer, tmp_path, tmp_path / "cache")
    for name, gate, clamp in (("adda", 0.6, None), ("aad", None, 0.01)):
        strategy = build_strategy({"name": name}, copy.deepcopy(tiny_model))
        source, adapt = list(strategy.phases(data, ctx))
        groups = {g.name: g for g in adapt.groups}
        assert not source.groups and adapt.loss == strategy.adapt_loss
        d, encoder = groups["discriminator"], groups["target_encoder"]
        assert {d.lr, encoder.lr} == {1e-5} and {d.schedule, encoder.schedule} == {"constant"}
        assert d.weight_decay == encoder.weight_decay == 0.0 and d.max_grad_norm == 0 and encoder.max_grad_norm == 1
        assert d.clamp == clamp
        if gate is None:
            assert encoder.gate is None
        else:
            assert not encoder.updates(1, {"domain_acc": gate}) and encoder.updates(1, {"domain_acc": gate + 0.01})


@pytest.mark.parametrize("name", ["dann", "cdan"])
def test_dann_discriminator_outpaces_the_encoder(tokenizer, tiny_model, tmp_path, ctx, name):
    """D has its own Adam, constant and faster than the bottleneck and head (10x the backbone), with a short
    momentum; the backbone trains with the run's settings."""
    data = build_data(demo_config(), tokenizer, tmp_path, tmp_path / "cache")
    strategy = build_strategy({"name": name}, copy.deepcopy(tiny_model))
    (phase,) = strategy.phases(data, ctx)
    groups = {g.name: g for g in phase.groups}
    d, head = groups["discriminator"], groups["head"]
    assert list(d.modules) == [strategy.discriminator] and list(head.modules) == [strategy.model.head]
    assert d.schedule == "constant" and d.betas == (0.5, 0.999) and head.schedule == "warmup_linear"
    assert d.lr == 1e-3 > head.lr == 10 * ctx.lr


@pytest.mark.parametrize("name", ["dann", "cdan"])
def test_sdat_probes_the_task_loss_rho_away_and_leaves_the_discriminator_alone(tokenizer, tiny_model, tmp_path, ctx,
                                                                              name):
    """strategy.sharpness_rho (SDAT): in the probe, the encoder, bottleneck and classifier sit at w + ρ·g/‖g‖, g the
    source task loss's gradient; D and the BatchNorm statistics have not moved; afterwards every weight is back."""
    data = build_data(demo_config(), tokenizer, tmp_path, tmp_path / "cache")
    strategy = build_strategy({"name": name, "sharpness_rho": 0.05}, copy.deepcopy(tiny_model)).train()
    (phase,) = strategy.phases(data, ctx)
    source, before = batch(), snapshot(strategy)
    reference = copy.deepcopy(strategy)
    torch.manual_seed(0)  # the same dropout masks in both passes
    names, params = zip(*[(n, p) for n, p in reference.named_parameters() if n.startswith("model.")])
    grads = dict(zip(names, torch.autograd.grad(reference.task_loss(source)[0], params, allow_unused=True)))
    norm = torch.sqrt(sum((g ** 2).sum() for g in grads.values() if g is not None))
    from transfer_cli.training.sharpness import ascended

    torch.manual_seed(0)
    with ascended(phase.sharpness, source, ctx.accelerator):
        probed = snapshot(strategy)
    expected = {n: before[n] if g is None else before[n] + 0.05 * g / norm for n, g in grads.items()}
    for n in grads:
        assert torch.allclose(probed[n], expected[n], atol=1e-7), n
    # D and the BatchNorm statistics stay exactly; a bias just before BatchNorm has a gradient of rounding size, so
    # whether it moves is up to float rounding: the allclose above checks how far each parameter moved
    assert changed(before, probed) <= {n for n, g in grads.items() if g is not None}
    assert changed(before, snapshot(strategy)) == set()  # D, BatchNorm statistics, and the weights put back
    default = build_strategy({"name": name}, tiny_model).phases(data, ctx)[0].sharpness  # on for DANN (screened)
    assert (default and default.rho) == {"dann": 0.05, "cdan": None}[name]


def test_aad_distils_on_source_and_target_text(tiny_model):
    """KD is zero while the target encoder is the source encoder; once it moves, KD depends on the target batch
    too, and a step on its gradient alone pulls the encoder back towards the teacher."""
    torch.manual_seed(0)
    strategy = adapting("aad", tiny_model)
    source, target = batch(), batch(seed=1, labels=False)
    kd = lambda text: strategy(source, text, 0.0)[1]["kd_loss"]  # noqa: E731
    assert kd(target) == pytest.approx(0.0, abs=1e-4)  # T² = 400 scales rounding
    with torch.no_grad():
        for p in tiny_model.backbone.parameters():
            p.add_(0.1 * torch.randn_like(p))
    moved = [kd(text) for text in (target, batch(seed=2, labels=False))]
    assert min(moved) > 1e-2 and abs(moved[0] - moved[1]) > 1e-5  # exactly equal if only the source text counted
    step(strategy, "model.backbone.", term_gradient(strategy, source, target, weight="kd_weight"))
    assert kd(target) < 0.9 * moved[0]


def test_cdan_discriminator_reads_the_predictions_weighted_by_their_confidence(tiny_model):
    """D reads z ⊗ g: on the same z, a classifier that predicts the other class changes the domain loss; and
    CDAN+E's weights ω = 1 + exp(-H(g)) change it against plain CDAN (ω = 1)."""
    torch.manual_seed(0)
    strategy = build_strategy({"name": "cdan", "entropy": False}, tiny_model).eval()
    source, target = batch(), batch(seed=1, labels=False)
    classifier = strategy.model.head.classifier
    with torch.no_grad():  # a boundary through the batch: sure and unsure predictions of either class
        classifier.weight.mul_(20)
        classifier.bias.sub_(strategy.encode(source, target)[1].mean(0))
    optimiser = torch.optim.Adam(strategy.discriminator.parameters(), lr=1e-2)
    for _ in range(30):  # a D that tells the two batches apart, more surely for some examples than for others
        optimiser.zero_grad()
        strategy(source, target, progress=0.0)[0].backward()
        optimiser.step()
    domain_loss = lambda: strategy(source, target, progress=1.0)[1]["domain_loss"]  # noqa: E731
    plain = domain_loss()
    with torch.no_grad():  # each example's probabilities swapped; z and H as they were
        classifier.weight.neg_()
        classifier.bias.neg_()
    swapped = domain_loss()
    assert abs(swapped - plain) > 1e-2
    strategy.params.entropy = True
    assert abs(domain_loss() - swapped) > 1e-3


def test_mlm_adapt_joint_step_adapts_the_encoder_to_the_target_text(tiny_model, tokenizer):
    """The joint phase's MLM term: a step on its gradient alone makes the backbone better at the target text's
    masked tokens (the same masks)."""
    strategy = build_strategy({"name": "mlm_adapt"}, tiny_model)
    strategy.special_ids, strategy.mask_id = tokenizer.all_special_ids, tokenizer.mask_token_id
    strategy.start_phase(Phase("joint", None, 1))
    strategy.eval()
    source, target = batch(), batch(seed=1, labels=False)

    def mlm() -> float:
        torch.manual_seed(0)
        return strategy.mlm_loss(target).item()

    before = mlm()
    step(strategy, "model.backbone.", term_gradient(strategy, source, target), size=0.5)
    assert mlm() < before - 1e-3


@pytest.mark.parametrize(
    "strategy, expected",
    [("source_only", 0), ("dann", 0), ("finetune", 20), ("target_oracle", 100)],
)
def test_who_sees_target_labels(tokenizer, tiny_model, tmp_path, ctx, strategy, expected):
    data = build_data(demo_config(), tokenizer, tmp_path, tmp_path / "cache")
    extra = {"k": 20} if strategy == "finetune" else {}
    phases = build_strategy({"name": strategy, **extra}, tiny_model).phases(data, ctx)
    assert data.target_labels_used == expected
    for phase in phases:
        if phase.unlabelled is not None:
            assert phase.unlabelled.labels is None
    if strategy in ("source_only", "dann"):
        assert all(phase.train is data.source_train for phase in phases)


def test_strategy_params_are_validated(tiny_model):
    from transfer_cli.errors import TransferError

    with pytest.raises(TransferError, match="wieght.*weight, gamma, hidden"):
        build_strategy({"name": "dann", "wieght": 2.0}, tiny_model)


def test_dann_step_returns_its_parts(tiny_model):
    strategy = build_strategy({"name": "dann"}, tiny_model)
    batch = {"input_ids": torch.randint(1000, 2000, (4, 10)), "attention_mask": torch.ones(4, 10, dtype=torch.long)}
    loss, logs = strategy({**batch, "labels": torch.tensor([0, 1, 0, 1])}, batch, progress=0.5)
    assert set(logs) == {"task_loss", "domain_loss", "domain_acc", "lambda"}
    assert logs["lambda"] == pytest.approx(dann_lambda(0.5))
    assert loss.item() == pytest.approx(logs["task_loss"] + logs["domain_loss"], rel=1e-4)
