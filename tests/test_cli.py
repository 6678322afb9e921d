"""The real CLI in a subprocess: help, list, single runs, multiruns, a user's own domain, outputs on disk."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from transfer_cli.config import CONFIG_DIR, group_options
from transfer_cli.strategies import strategy_class

from .conftest import SMALL

METRIC_KEYS = {
    "schema_version", "status", "model", "source", "target", "strategy", "hardware", "protocol", "oracle", "seed",
    "device", "precision", "source_train_size", "target_test_size", "target_test_accuracy", "target_test_f1_macro",
    "source_val_accuracy", "transfer_gap", "selection", "selected_epoch", "train_seconds", "total_seconds",
    "train_samples_per_second", "eval_samples_per_second", "trainable_parameters", "target_labels_used",
    "selection_score", "label_free_score", "target_entropy", "target_snd", "dev_risk", "config_digest", "threads",
}


def run_folders(root: Path):
    return sorted(p.parent for p in root.rglob("status.json"))


def test_help_version_list(cli):
    out = cli("--help")
    assert out.returncode == 0 and "run" in out.stdout and "list" in out.stdout
    out = cli("--version")
    assert out.returncode == 0 and out.stdout.startswith("transfer ")
    out = cli("list")
    assert out.returncode == 0
    for expected in ("minilm", "books", "movies", "demo_films", "dann", "Ganin", "cpu", "demo", "smoke"):
        assert expected in out.stdout
    out = cli("frobnicate")
    assert out.returncode == 2 and "unknown command" in out.stderr


def test_hydra_flags(cli):
    out = cli("run", "--help")
    assert out.returncode == 0 and "transfer run" in out.stdout and "finetune" in out.stdout
    out = cli("run", "--cfg", "job", "strategy=dann", "target=dvd")
    assert out.returncode == 0
    assert "name: dann" in out.stdout and "dvd:" in out.stdout
    out = cli("run", "--info", "searchpath")
    assert out.returncode == 0 and "configs" in out.stdout
    out = cli("run", "-c", "job", "model=tiny")
    assert out.returncode == 0 and "name: tiny" in out.stdout


def test_tab_completion(cli):
    out = cli("run", "-sc", "install=bash")
    assert out.returncode == 0 and out.stdout.rstrip().endswith("hydra_bash_completion transfer")
    out = cli("-sc", "query=bash", env={"COMP_LINE": "transfer run strategy="})
    assert out.returncode == 0 and "strategy=dann" in out.stdout.split()
    out = cli("-sc", "query=bash", env={"COMP_LINE": "transfer run target=mov"})
    assert out.stdout.split() == ["target=movies"]


# The demo's own settings on fewer reviews, with the tiny model (a few seconds a job); fp32 on any CPU.
DEMO_QUICK = ["experiment=demo", "model=tiny", "hardware=cpu_fp32", "train.lr=3e-3", "train.epochs=5",
              "data.max_source_train=480", "data.max_source_val=60", "data.max_target_test=300",
              "data.max_target_validation=100"]


def test_demo_oracle_beats_source_only(cli, tmp_path):
    """The offline quickstart's promise: the generated shift is real, so a model trained on the films' own labels
    beats one trained on gadgets by far: by 0.43 to 0.55 over seeds 0-4, oracle 0.89 to 0.92. With a target drawn from
    the gadgets instead (no shift), the same commands differ by 0.00 to 0.02, and this test fails."""
    out = cli("run", "-m", "strategy=source_only,target_oracle", *DEMO_QUICK, env={"TRANSFER_DATA_DIR": str(tmp_path / "none")})
    assert out.returncode == 0, out.stderr
    accuracy = {m["strategy"]: m["target_test_accuracy"]
                for m in (json.loads(p.read_text()) for p in tmp_path.rglob("metrics.json"))}
    assert accuracy["target_oracle"] > 0.8 and accuracy["target_oracle"] > accuracy["source_only"] + 0.25, accuracy


def test_single_run_writes_every_output(cli, tmp_path):
    out = cli("run", "strategy=dann", "source=books", "target=dvd", *SMALL)
    assert out.returncode == 0, out.stderr
    assert "target_test_accuracy" in out.stdout  # the rich table
    (folder,) = run_folders(tmp_path / "outputs")
    metrics = json.loads((folder / "metrics.json").read_text())
    assert METRIC_KEYS <= set(metrics)
    assert metrics["strategy"] == "dann" and metrics["source"] == "books" and metrics["target"] == "dvd"
    assert metrics["status"] == "completed" and metrics["oracle"] is False and metrics["target_labels_used"] == 0
    assert metrics["target_test_size"] == 32 and (metrics["target_test_accuracy"] * 32).is_integer()
    assert json.loads((folder / "status.json").read_text())["status"] == "completed"
    env = json.loads((folder / "env.json").read_text())
    assert env["packages"]["torch"]
    rows = list(csv.DictReader((folder / "history.csv").open()))
    assert len(rows) == 1 and {"epoch", "train_loss", "domain_loss", "source_val_accuracy", "target_test_accuracy"} <= set(rows[0])
    assert float(rows[0]["target_test_accuracy"]) == metrics["target_test_accuracy"]  # the one epoch's score
    assert (folder / ".hydra" / "config.yaml").exists() and (folder / "run.log").exists()
    assert not list(folder.glob(".*.json*"))  # no temporary files left


def test_multirun_leaves_one_folder_per_job(cli, tmp_path):
    out = cli("run", "-m", "strategy=source_only,target_oracle", "source=books", "target=kitchen", *SMALL)
    assert out.returncode == 0, out.stderr
    folders = run_folders(tmp_path / "outputs" / "multirun")
    assert len(folders) == 2
    strategies = {json.loads((f / "metrics.json").read_text())["strategy"]: f for f in folders}
    assert set(strategies) == {"source_only", "target_oracle"}
    assert strategies["source_only"].name.startswith("strategy=source_only,source=books,target=kitchen,model=tiny,")
    oracle = json.loads((strategies["target_oracle"] / "metrics.json").read_text())
    assert oracle["oracle"] is True and oracle["target_labels_used"] > 0 and oracle["selection"] == "target_val"


def test_sweep_over_hardware_in_one_process(cli, tmp_path):
    """Each job of a sweep in one process gets its own hardware option's precision (the Accelerate state is reset
    per job): a forced bf16, cpu_fp32, and cpu, which resolves as this CPU allows (bf16 where native and faster)."""
    (tmp_path / "cfg" / "hardware").mkdir(parents=True)
    (tmp_path / "cfg" / "hardware" / "cpu_bf16.yaml").write_text("name: cpu_bf16\ndevice: cpu\nprecision: bf16\nthreads: 0\n")
    out = cli("run", "-m", "--config-dir", "cfg", "hardware=cpu_bf16,cpu_fp32,cpu", "source=books", "target=dvd", *SMALL)
    assert out.returncode == 0, out.stderr
    metrics = {m["hardware"]: m for m in (json.loads(p.read_text()) for p in tmp_path.rglob("metrics.json"))}
    assert metrics["cpu_bf16"]["precision"] == "bf16" and metrics["cpu_fp32"]["precision"] == "fp32"
    # hardware=cpu: whatever this CPU's rule chose (bf16 or fp32), with its reason
    cpu = metrics["cpu"]
    assert cpu["precision"] in ("bf16", "fp32") and cpu["precision_reason"].startswith(f"{cpu['precision']}: this CPU")


def test_multi_source_run(cli, tmp_path):
    out = cli("run", "source=[books,electronics]", "target=kitchen", *SMALL)
    assert out.returncode == 0, out.stderr
    (folder,) = run_folders(tmp_path / "outputs")
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["source"] == "books+electronics" and metrics["source_train_size"] == 96


def test_user_domain_is_one_yaml_file(cli, tmp_path):
    """The README's example: a CSV of star-rated reviews and one YAML file in the user's config folder."""
    rows = ["text,stars"] + [f"\"{w} product, really {w}\",{s}" for w, s in [("great", 5), ("awful", 1), ("fine", 3)] * 30]
    (tmp_path / "shop.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "my_configs" / "domain").mkdir(parents=True)
    (tmp_path / "my_configs" / "domain" / "shop.yaml").write_text(
        f"name: shop\ndescription: my shop's reviews\nloader: files\npath: {tmp_path / 'shop.csv'}\n"
        "text_column: text\nlabel_column: stars\nlabel_map: {1: 0, 2: 0, 4: 1, 5: 1}\n"
    )
    out = cli("run", "--config-dir", "my_configs", "source=books", "target=shop", *SMALL)
    assert out.returncode == 0, out.stderr
    (folder,) = run_folders(tmp_path / "outputs")
    assert json.loads((folder / "metrics.json").read_text())["target"] == "shop"
    out = cli("list", "--config-dir", "my_configs")
    assert "shop" in out.stdout and "my shop's reviews" in out.stdout


def test_transductive_protocol_is_recorded(cli, tmp_path):
    out = cli("run", "experiment=smoke", "strategy=finetune", "strategy.k=20", "strategy.target_epochs=1",
              "protocol=transductive", "data.max_target_test=null")
    assert out.returncode == 0, out.stderr
    (folder,) = run_folders(tmp_path / "outputs")
    metrics = json.loads((folder / "metrics.json").read_text())
    # all 100 target reviews of the slice, less the 20 whose labels the few-shot phase trained on
    assert metrics["protocol"] == "transductive" and metrics["target_test_size"] == 80


STRATEGIES = sorted(group_options("strategy", [CONFIG_DIR]))


# 32-token real reviews, 32 per source: distill's default MiniLM teacher is the costliest job (a third of the sweep)
REAL_SHORT = ["data.max_length=32", "data.max_source_train=32", "data.max_source_val=16"]


@pytest.mark.parametrize("domains", [["source=[books,dvd]", "target=kitchen", *SMALL, *REAL_SHORT],
                                     ["experiment=demo", *SMALL, "data.max_source_train=64"]], ids=["real", "demo"])
def test_every_strategy_runs_from_the_cli(cli, tmp_path, domains):
    """One multirun over the whole suite, with the strategies' own defaults, on two real sources and on the demo; the
    few-shot ones with k = 16, which the slice's target pool holds (their default k = 100 would be refused)."""
    few_shot = ["finetune", "maml"]
    out = cli("run", "-m", f"strategy={','.join(s for s in STRATEGIES if s not in few_shot)}", *domains)
    assert out.returncode == 0, out.stderr[-3000:]
    out = cli("run", "-m", f"strategy={','.join(few_shot)}", "++strategy.k=16", *domains)
    assert out.returncode == 0, out.stderr[-3000:]
    metrics = {m["strategy"]: m for m in (json.loads(p.read_text()) for p in tmp_path.rglob("metrics.json"))}
    assert sorted(metrics) == STRATEGIES
    for name, m in metrics.items():
        correct = m["target_test_accuracy"] * m["target_test_size"]  # a count of the test examples
        assert m["status"] == "completed" and correct == pytest.approx(round(correct)), name
        expected = {"none": 0}.get(strategy_class(name).target_labels)
        assert (m["target_labels_used"] == 0) == (expected == 0), name
        assert (m["source_labels_used"] == 0) == (name in ("zero_shot", "zero_shot_adapt", "setfit", "target_oracle")), name
    assert metrics["zero_shot"]["selection"] == "none" and metrics["zero_shot"]["epochs_run"] == 0
    if domains[0].startswith("source="):
        assert {m["source"] for m in metrics.values()} == {"books+dvd"}
    assert metrics["lora"]["peft"] == "lora" and metrics["dann"]["peft"] == "none"
    assert metrics["lora"]["trainable_parameters"] < metrics["source_only"]["trainable_parameters"] / 10
    assert metrics["feature_extraction"]["trainable_parameters"] < 1000


def test_adaptation_losses_combine_with_lora(cli, tmp_path):
    out = cli("run", "strategy=dann", "peft=lora", "peft.options.r=4", "source=books", "target=dvd", *SMALL)
    assert out.returncode == 0, out.stderr
    (folder,) = run_folders(tmp_path / "outputs")
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["strategy"] == "dann" and metrics["peft"] == "lora"
    rows = list(csv.DictReader((folder / "history.csv").open()))
    assert "domain_loss" in rows[0]
