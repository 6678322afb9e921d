"""Every user error: one line on stderr, exit code 2, no traceback, and no metrics.json."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from .conftest import SMALL


def assert_clean_error(out, tmp_path: Path, *fragments: str):
    assert out.returncode == 2, (out.returncode, out.stderr)
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, out.stderr
    assert "Traceback" not in out.stderr and "Traceback" not in out.stdout
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert not list(tmp_path.rglob("metrics.json"))


@pytest.mark.parametrize(
    "override, listed",
    [("model=gpt9", "minilm"), ("source=bookz", "books"), ("target=film", "movies"), ("strategy=danm", "dann"),
     ("hardware=tpu", "cpu"), ("experiment=dmeo", "demo"), ("source=[books,nope]", "kitchen")],
)
def test_unknown_choice_lists_valid_ones(cli, tmp_path, override, listed):
    assert_clean_error(cli("run", override), tmp_path, "unknown", listed)


def test_unknown_choice_in_multirun(cli, tmp_path):
    assert_clean_error(cli("run", "-m", "strategy=dann,danm"), tmp_path, "unknown strategy 'danm'")


def test_missing_data_root(cli, tmp_path):
    out = cli("run", env={"TRANSFER_DATA_DIR": str(tmp_path / "no-data")})
    assert_clean_error(out, tmp_path, "not found at", "no-data", "TRANSFER_DATA_DIR", "experiment=demo")
    (status,) = tmp_path.rglob("status.json")
    assert '"failed"' in status.read_text()


def test_failed_job_in_multirun_keeps_status(cli, tmp_path):
    out = cli("run", "-m", "target=kitchen,restaurants", *SMALL)
    assert out.returncode == 2
    assert "restaurants" in out.stderr.splitlines()[-1]
    statuses = sorted(p.read_text() for p in tmp_path.rglob("status.json"))
    assert len(statuses) == 2 and any('"completed"' in s for s in statuses) and any('"failed"' in s for s in statuses)


def write_domain(tmp_path: Path, csv_text: str, extra: str = "") -> None:
    (tmp_path / "d.csv").write_text(csv_text)
    (tmp_path / "cfg" / "domain").mkdir(parents=True, exist_ok=True)
    (tmp_path / "cfg" / "domain" / "mine.yaml").write_text(f"name: mine\nloader: files\npath: {tmp_path / 'd.csv'}\n{extra}")


@pytest.mark.parametrize(
    "csv_text, fragments",
    [("body,label\ngood,1\nbad,0\n", ["column(s) ['text'] not in", "text_column"]),
     ("text,label\n", ["is empty"]),
     ("text,label\ngood,1\nfine,1\n", ["single class"])],
)
def test_bad_user_data(cli, tmp_path, csv_text, fragments):
    write_domain(tmp_path, csv_text)
    assert_clean_error(cli("run", "-cd", "cfg", "target=mine", *SMALL), tmp_path, *fragments)


def test_strategy_params_fail_before_data_loads(cli, tmp_path):
    out = cli("run", "strategy=finetune", "strategy.k=0", env={"TRANSFER_DATA_DIR": str(tmp_path / "no-data")})
    assert_clean_error(out, tmp_path, "strategy.k=0", ">= 1")


def test_label_map_out_of_range(cli, tmp_path):
    write_domain(tmp_path, "text,stars\ngood,5\nbad,1\n", "label_column: stars\nlabel_map: {1: 0, 5: 2}\n")
    assert_clean_error(cli("run", "-cd", "cfg", "target=mine", *SMALL), tmp_path, "label_map maps to [2]")


@pytest.mark.parametrize("override", ["hydra/launcher=local", "hydra/launcher=slurm", "experiment=optuna",
                                      "hydra/sweeper=optuna"])
def test_sweep_plugin_not_installed(cli, tmp_path, override):
    # a regular package named hydra_plugins, first on the path, hides the installed plugins' namespace package
    (tmp_path / "no_plugins" / "hydra_plugins").mkdir(parents=True)
    (tmp_path / "no_plugins" / "hydra_plugins" / "__init__.py").touch()
    out = cli("run", "-m", override, *SMALL, env={"PYTHONPATH": str(tmp_path / "no_plugins")})
    assert_clean_error(out, tmp_path, "needs a Hydra plugin that is not installed", 'pip install ".[sweeps]"')


def test_unreachable_hub(cli, tmp_path):
    assert_clean_error(cli("run", "target=restaurants", *SMALL), tmp_path, "could not load 'fancyzhx/yelp_polarity'", "offline")


def test_unreachable_model_hub(cli, tmp_path):
    assert_clean_error(cli("run", "model=bert-base", *SMALL[1:]), tmp_path, "bert-base", "model=minilm")


@pytest.mark.parametrize(
    "override, fragments",
    [("train.lr=0", ["train.lr=0", "> 0"]),
     ("train.lr=-1e-3", ["train.lr", "> 0"]),
     ("data.max_length=100000", ["data.max_length=100000", "limit"]),
     ("train.lrr=0.1", ["lrr"]),
     ("train.epochs=many", ["train.epochs", "many"]),
     ("hardware.precision=fp8", ["fp8", "bf16"]),
     ("protocol=sometimes", ["sometimes", "transductive"]),
     ("strategy.wieght=2", ["wieght"]),
     ("target=books", ["both a source and the target"]),
     ("strategy.weight=-1", ["strategy.weight=-1.0", ">= 0"]),
     ("hardware=cuda", ["no cuda device", "hardware=cpu"])],
)
def test_invalid_values(cli, tmp_path, override, fragments):
    if override == "hardware=cuda" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    args = [*SMALL, override] if override != "data.max_length=100000" else [*SMALL[:1], *SMALL[2:], override]
    assert_clean_error(cli("run", "strategy=dann", *args), tmp_path, *fragments)


@pytest.mark.parametrize(
    "overrides, fragments",
    [(["strategy=lora", "peft=none"], ["strategy=lora needs LoRA adapters", "peft=lora"]),
     (["strategy=distill", "strategy.teacher=bert-large-uncased"], ["bert-large-uncased", "model=minilm"]),
     (["model.freeze_layers=5"], ["model.freeze_layers=5", "2 layers"]),
     (["peft=lora", "+peft.options.rank=4"], ["peft=lora", "rank", "peft.options"]),
     (["peft=ia3", "peft.options.fan_in_fan_out=true"], ["write +peft.options.fan_in_fan_out=VALUE"]),
     (["strategy=self_training", "strategy.threshold=1.5"], ["strategy.threshold=1.5", "[0, 1)"]),
     (["strategy=feature_extraction", "strategy.head=deep"], ["strategy.head=deep", "linear or mlp"]),
     (["peft=prefix_tuning", "train.save_model=true"], ["cannot save a prefix-tuning run", "peft=lora"])],
)
def test_invalid_suite_options(cli, tmp_path, overrides, fragments):
    assert_clean_error(cli("run", *SMALL, *overrides), tmp_path, *fragments)


PATH_ERRORS = textwrap.dedent("""
    import sys
    from transfer_cli.cli import main
    try:
        main(sys.argv[1:])
    except SystemExit as stop:
        print("exit", stop.code, "torch" in sys.modules, "transformers" in sys.modules)
""")


@pytest.mark.parametrize("command", [["predict", "{dir}", "--input", "x.csv"], ["export", "{dir}", "--out", "{dir}/x"],
                                     ["analyze", "{dir}"], ["serve", "{dir}"]])
def test_a_wrong_folder_fails_before_torch_loads(tmp_path, command):
    """A mistyped folder is answered in a second: the path is checked before torch and transformers are imported."""
    args = [arg.format(dir=tmp_path) for arg in command]
    out = subprocess.run([sys.executable, "-c", PATH_ERRORS, *args], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["exit", "2", "False", "False"], out.stdout + out.stderr
    assert "not a run folder" in out.stderr or "neither a run folder" in out.stderr
