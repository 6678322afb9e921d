"""The mutation checks behind the mechanism tests: each entry breaks one mechanism (deletes a term, flips a sign,
lets a frozen part train) in a copy of the code and runs the test that must catch it.

    python scripts/mutations.py             # every entry: about 10 minutes on 2 cores
    python scripts/mutations.py aad cdan    # the entries whose file or test names one of the words

One line per entry: `caught` (the test failed, as it must), `NOT CAUGHT`, `stale` (the code no longer holds the text
to mutate, or the test is gone: update the entry) or `broken` (the mutated copy does not even import). A first,
unmutated run of one test proves that the copy works. Exits 1 unless every entry is caught."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
S, M, L = "transfer_cli/strategies/", "tests/test_mechanisms.py::", "tests/test_strategy_mechanisms.py::"
ENCODER_ASCENDS = M + "test_the_encoder_ascends_the_domain_loss_that_the_discriminator_descends"
CDAN_READS = M + "test_cdan_discriminator_reads_the_predictions_weighted_by_their_confidence"
AAD_DISTILS = M + "test_aad_distils_on_source_and_target_text"
MLM_JOINT = M + "test_mlm_adapt_joint_step_adapts_the_encoder_to_the_target_text"
DISCREPANCY = L + "test_a_step_on_the_discrepancy_loss_brings_source_and_target_features_closer"
GROUPS = "tests/test_loop.py::test_groups_update_on_their_own_ratio_gate_and_constraint"
PAIRED = "tests/test_loop.py::test_unlabelled_batches_are_paired_by_length"
OWN_SETTINGS = "tests/test_loop.py::test_each_group_gets_its_own_rate_decay_momentum_and_schedule"
SETFIT = "tests/test_few_labels.py::test_setfit_step_pulls_each_class_together_and_the_classes_apart"
SDAT = M + "test_sdat_probes_the_task_loss_rho_away_and_leaves_the_discriminator_alone[dann]"
KD = "kd = 0.5 * (self.distillation(head(source), teacher_source) + self.distillation(head(target), teacher_target))"
OMEGA = "omega = entropy_weights(g) if self.params.entropy else torch.ones_like(domain)"

# (file, text, replacement, test)
MUTATIONS = [
    # DANN and CDAN: the gradient reversal, its sign, the domain term, CDAN's conditioning and entropy weights
    (S + "dann.py", "self.discriminator(self.grl(z, lam))", "self.discriminator(z)", ENCODER_ASCENDS + "[dann]"),
    (S + "dann.py", "return task + self.params.weight * domain_loss, {", "return task, {", ENCODER_ASCENDS + "[dann]"),
    ("transfer_cli/losses/adversarial.py", "return -ctx.coeff * grad, None", "return ctx.coeff * grad, None",
     ENCODER_ASCENDS + "[dann]"),
    (S + "cdan.py", "self.grl(self.map(z.float(), g), lam)", "self.map(z.float(), g)", ENCODER_ASCENDS + "[cdan]"),
    (S + "cdan.py", "self.map(z.float(), g)", "self.map(z.float(), torch.ones_like(g))", CDAN_READS),
    (S + "cdan.py", OMEGA, "omega = torch.ones_like(domain)", CDAN_READS),
    # ADDA and AAD: D's labels, the inverted labels of the encoder, who each loss reaches, the gate, the clamp, C
    (S + "adda.py", "torch.cat([torch.ones(len(real)), torch.zeros(len(fake))])",
     "torch.cat([torch.zeros(len(real)), torch.ones(len(fake))])",
     M + "test_adda_discriminator_step_tells_source_text_from_target_text[adda]"),
    (S + "adda.py", "binary_cross_entropy_with_logits(fooled, torch.ones_like(fooled))",
     "binary_cross_entropy_with_logits(fooled, torch.zeros_like(fooled))",
     M + "test_adda_encoder_step_makes_target_text_look_real_to_the_discriminator[adda]"),
    (S + "adda.py", "frozen_d = {k: v.detach() for", "frozen_d = {k: v for",
     M + "test_adda_discriminator_loss_reaches_only_d_and_the_encoder_loss_only_the_encoder[adda]"),
    (S + "adda.py", "torch.tanh(torch.cat([real, fake]).detach())", "torch.tanh(torch.cat([real, fake]))",
     M + "test_adda_discriminator_loss_reaches_only_d_and_the_encoder_loss_only_the_encoder[adda]"),
    (S + "adda.py", "max_grad_norm=1.0, gate=gate)", "max_grad_norm=1.0, gate=None)",
     M + "test_adda_adaptation_groups_follow_the_reference"),
    (S + "adda.py", "frozen=[self.model.head]", "frozen=[]",
     "tests/test_strategies.py::test_adda_adapts_the_target_encoder_only[aad]"),  # ADDA: no loss reaches C
    (S + "aad.py", "+ p.kd_weight * kd", "+ 0 * kd", AAD_DISTILS),
    (S + "aad.py", "+ p.kd_weight * kd", "- p.kd_weight * kd", AAD_DISTILS),
    (S + "aad.py", KD, "kd = self.distillation(head(source), teacher_source)", AAD_DISTILS),
    (S + "aad.py", "clamp: float = 0.01", "clamp: float = 0.0", M + "test_adda_adaptation_groups_follow_the_reference"),
    # the discrepancy terms
    (S + "mmd.py", "return task + weight * discrepancy", "return task + 0 * discrepancy", DISCREPANCY + "[mmd]"),
    (S + "mmd.py", "return task + weight * discrepancy", "return task - weight * discrepancy", DISCREPANCY + "[mmd]"),
    (S + "coral.py", "return task + self.params.weight * distance", "return task + 0 * distance",
     DISCREPANCY + "[coral]"),
    (S + "coral.py", "return task + self.params.weight * distance", "return task - self.params.weight * distance",
     DISCREPANCY + "[coral]"),
    # distillation, self-training, zero-shot adaptation, MAML, the few-shot and oracle baselines, SetFit
    (S + "distill.py", "return a * task + (1 - a) * kd", "return a * task - (1 - a) * kd",
     L + "test_distill_gradient_vanishes_at_the_teacher_and_a_step_moves_the_student_towards_it"),
    (S + "distill.py", "return a * task + (1 - a) * kd", "return a * task + 0 * kd",
     L + "test_distill_loss_is_alpha_hard_labels_plus_kd_on_source_and_target_text"),
    (S + "self_training.py", "pseudo = probabilities.argmax(-1).numpy()[chosen]",
     "pseudo = 1 - probabilities.argmax(-1).numpy()[chosen]",
     L + "test_self_training_pseudo_labels_are_the_current_models_predictions_not_target_labels"),
    (S + "zero_shot_adapt.py", "pseudo = probabilities.argmax(-1).numpy()[chosen]",
     "pseudo = 1 - probabilities.argmax(-1).numpy()[chosen]",
     "tests/test_few_labels.py::test_zero_shot_adapt_trains_on_its_own_predictions_and_reads_no_label"),
    (S + "zero_shot.py", ".mean(1)", "[:, 0]",
     "tests/test_few_labels.py::test_zero_shot_averages_its_templates_into_one_prototype_per_class"),
    (S + "maml.py", "p - self.params.inner_lr * g.detach()", "p + self.params.inner_lr * g.detach()",
     L + "test_maml_query_loss_is_taken_after_a_first_order_inner_step"),
    (S + "maml.py", "batch_by=data.source_domain", "batch_by=None",
     L + "test_maml_meta_phase_runs_its_meta_loss_on_single_domain_batches"),
    (S + "finetune.py", "few = data.labelled_target(self.params.k, ctx.seed)",
     "few = data.labelled_target(2 * self.params.k, ctx.seed)",
     L + "test_finetune_trains_on_source_then_on_exactly_k_target_labels_outside_the_test_split"),
    (S + "target_oracle.py", "val=take(order[:n_val])", "val=take(order[n_val:])",
     L + "test_target_oracle_trains_and_selects_on_disjoint_parts_of_the_labelled_target_pool"),
    (S + "feature_extraction.py", "        set_trainable(model.backbone, False)", "        pass",
     L + "test_feature_extraction_head_learns_from_the_frozen_backbones_own_features"),
    (S + "setfit.py", 'return loss, {"pair_loss"', 'return -loss, {"pair_loss"', SETFIT),
    # mlm_adapt: the MLM term of the joint phase, the frozen backbone of the head phase
    (S + "mlm_adapt.py", "task + self.params.weight * mlm", "task + 0 * mlm", MLM_JOINT),
    (S + "mlm_adapt.py", "task + self.params.weight * mlm", "task - self.params.weight * mlm", MLM_JOINT),
    (S + "mlm_adapt.py", "frozen=[self.model]", "frozen=[]", "tests/test_strategies.py::test_mlm_adapt_phases"),
    (S + "base.py", "        for p in self._held:\n            p.requires_grad_(True)\n", "",
     "tests/test_strategies.py::test_mlm_adapt_phases"),
    (S + "distill.py", "        self.freeze(self.teacher)\n", "",
     "tests/test_strategies.py::test_distill_trains_the_teacher_then_only_the_student"),
    # the loop: update ratio, gate and clamp of parameter groups; length-paired unlabelled batches
    (S + "base.py", "return step % self.every == 0 and (self.gate is None or self.gate(logs))",
     "return self.gate is None or self.gate(logs)", GROUPS),
    (S + "base.py", "return step % self.every == 0 and (self.gate is None or self.gate(logs))",
     "return step % self.every == 0", GROUPS),
    ("transfer_cli/training/loop.py", "p.clamp_(-owner.clamp, owner.clamp)", "pass", GROUPS),
    ("transfer_cli/training/loop.py", "quantile * len(self.buckets)", "0 * len(self.buckets)", PAIRED),
    ("transfer_cli/training/loop.py", "logs = _mean_over_processes(logs, self.ctx.accelerator)", "pass",
     "tests/test_distributed.py::test_a_gate_decides_alike_on_every_process_from_their_mean_logs"),
    ("transfer_cli/training/loop.py", '"betas": group.betas', '"betas": (0.9, 0.999)', OWN_SETTINGS),
    ("transfer_cli/training/loop.py", "(train.weight_decay if group.weight_decay is None else group.weight_decay)",
     "train.weight_decay", OWN_SETTINGS),
    ("transfer_cli/training/loop.py", '"constant": lambda step: 1.0', '"constant": warmup_then_linear_decay',
     OWN_SETTINGS),
    # SDAT: the probe's ascent, BatchNorm statistics held through it, the weights put back after it
    ("transfer_cli/training/sharpness.py", "alpha=sharpness.rho / norm)", "alpha=0.0)", SDAT),
    ("transfer_cli/training/sharpness.py", "m.momentum = 0.0", "pass", SDAT),
    ("transfer_cli/training/sharpness.py", "                p.copy_(w)", "                pass", SDAT),
]


def check(file: str, text: str, replacement: str, test: str) -> str:
    """The verdict on one mutation, from its test run in a copy of the code."""
    source = (ROOT / file).read_text()
    if text not in source:
        return "stale"
    with tempfile.TemporaryDirectory(prefix="mutation") as tmp:
        copy = Path(tmp)
        for part in ("transfer_cli", "tests", "configs"):
            shutil.copytree(ROOT / part, copy / part, ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy(ROOT / "pyproject.toml", copy)
        (copy / "transfer_cli" / "configs").symlink_to("../configs")  # where the wheel puts them
        (copy / file).write_text(source.replace(text, replacement))
        run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", test],
                             cwd=copy, env={**os.environ, "PYTHONPATH": str(copy)}, capture_output=True, text=True)
    if run.returncode == 0:
        return "NOT CAUGHT"
    if "ERROR: not found" in run.stdout + run.stderr:
        return "stale"  # the test itself is gone or renamed
    summary = (run.stdout.strip().splitlines() or [""])[-1]  # "1 failed in 3.1s", or "1 error" where it broke
    return "caught" if " failed" in summary else "broken"


def main(words: list) -> int:
    chosen = [m for m in MUTATIONS if not words or any(w in m[0] or w in m[3] for w in words)]
    file, text, _, test = chosen[0]
    if check(file, text, text, test) != "NOT CAUGHT":
        print(f"the unmutated copy fails {test}: fix that first")
        return 1
    verdicts = []
    for file, text, replacement, test in chosen:
        verdict = check(file, text, replacement, test)
        verdicts.append(verdict)
        print(f"{verdict:10}  {file}: {text!r} -> {replacement!r}  ::  {test.split('::')[-1]}", flush=True)
    print(f"{verdicts.count('caught')} of {len(chosen)} mutations caught")
    return 0 if verdicts.count("caught") == len(chosen) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
