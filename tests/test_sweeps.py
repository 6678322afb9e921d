"""Sweeps as a user runs them: a preset over pairs, interrupted and resumed, then reported; the parallel and
Slurm launchers; the Optuna preset and its label-free objective."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from pathlib import Path

import yaml

from .conftest import SMALL, TRANSFER
from .test_errors import assert_clean_error

TWO_EPOCHS = [*SMALL, "train.epochs=2"]  # two epochs: the validators have a choice to make


def as_from_a_terminal() -> None:
    """Ctrl-C as a terminal delivers it: a test run started in the background (nohup, `&`) ignores SIGINT, and its
    children would inherit that, so a Ctrl-C that lands between two sweep jobs would be lost."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def statuses(root: Path) -> dict:
    return {p.parent.name: json.loads(p.read_text())["status"] for p in root.rglob("status.json")}


def test_sweep_interrupted_resumed_and_reported(cli, cli_env, tmp_path):
    """2 strategies × 2 pairs × 2 seeds through experiment=amazon12 (the command line narrows its domains)."""
    sweep = tmp_path / "sweep"
    args = ["run", "-m", "experiment=amazon12", "source=books,dvd", "target=books,dvd", "strategy=source_only,dann",
            "seed=0,1", f"hydra.sweep.dir={sweep}", *TWO_EPOCHS]
    process = subprocess.Popen([*TRANSFER, *args], cwd=tmp_path, env=cli_env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True, preexec_fn=as_from_a_terminal)
    while list(statuses(sweep).values()).count("completed") < 2 and process.poll() is None:
        time.sleep(0.1)
    process.send_signal(signal.SIGINT)  # Ctrl-C
    process.wait(timeout=120)
    assert process.returncode != 0
    first = statuses(sweep)
    completed = {name for name, status in first.items() if status == "completed"}
    assert 2 <= len(completed) < 8, first
    # a job that failed for a passing reason: its folder holds a failed status and no metrics
    failed = sorted(completed)[0]
    (sweep / failed / "metrics.json").unlink()
    (sweep / failed / "status.json").write_text(json.dumps({"status": "failed", "error": "RuntimeError: out of memory"}))
    kept = {name: (sweep / name / "metrics.json").stat().st_mtime_ns for name in completed - {failed}}

    out = cli(*args)
    assert out.returncode == 0, out.stderr
    final = statuses(sweep)
    assert sorted(final.values()) == ["completed"] * 8 + ["skipped"] * 8  # 2 × 2 × 2 runs; books→books, dvd→dvd skipped
    assert all(name.split(",")[1].split("=")[1] != name.split(",")[2].split("=")[1]
               for name, status in final.items() if status == "completed")
    assert {name: (sweep / name / "metrics.json").stat().st_mtime_ns for name in kept} == kept  # not run again
    assert out.stdout.count("skipped: completed before") == len(kept)

    # the same command again finds everything done and leaves every file as it was (results are often committed)
    before = {p: p.read_bytes() for p in sweep.rglob("*") if p.is_file()}
    out = cli(*args)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("skipped: completed before") == 8 and out.stdout.count("the source is the target") == 8
    assert {p: p.read_bytes() for p in sweep.rglob("*") if p.is_file()} == before

    out = cli("report", str(sweep))
    assert out.returncode == 0, out.stderr
    md = (sweep / "report.md").read_text()
    assert "8 completed runs, 0 others, 8 skipped (source = target)" in md
    for pair in ("books→dvd", "dvd→books"):
        assert f"| source_only | {pair} | 2 | " in md and f"| dann | {pair} | 2 | " in md
    assert "Δ source_only" in md and " ± " in md
    assert "## Label-free model selection" in md and "| oracle pick | source_val | entropy | snd | dev |" in md
    assert "| all runs |  | 2 |" in md
    for figure in ("report_heatmap.png", "report_curves.png"):
        assert (sweep / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_rerun_skips_only_unchanged_configs(cli, tmp_path):
    domain = tmp_path / "cfg" / "domain" / "mine.yaml"
    domain.parent.mkdir(parents=True)
    domain.write_text("name: mine\nloader: blitzer\npath: amazon-multi-domain/dvd\n")
    args = ["run", "-m", "--config-dir", str(tmp_path / "cfg"), "source=books", "target=mine",
            f"hydra.sweep.dir={tmp_path / 'sweep'}", *SMALL]
    assert cli(*args).returncode == 0
    (metrics,) = (tmp_path / "sweep").rglob("metrics.json")
    first = json.loads(metrics.read_text())
    out = cli(*args, env={"TRANSFER_CACHE_DIR": str(tmp_path / "other-cache")})  # where files live does not count
    assert out.returncode == 0 and json.loads(metrics.read_text()) == first
    domain.write_text(domain.read_text() + "use_title: false\n")  # the same overrides, but other data: run again
    out = cli(*args)
    assert out.returncode == 0
    again = json.loads(metrics.read_text())
    assert again["config_digest"] != first["config_digest"] and again["output_dir"] == first["output_dir"]


def test_two_sweeps_of_one_folder_share_out_its_jobs(cli, tmp_path):
    """A job that another process holds is skipped, so that two `transfer run -m` of one sweep split its jobs; once
    it is let go, a rerun runs that job, and only that one."""
    from transfer_cli.config import job_folder
    from transfer_cli.outputs import job_claim

    args = ["run", "-m", "seed=0,1", f"hydra.sweep.dir={tmp_path / 'sweep'}", *SMALL]
    first, held = (tmp_path / "sweep" / job_folder([f"seed={seed}", *SMALL]) for seed in (0, 1))
    with job_claim(held) as claimed:  # as the other sweep does while it runs the job
        assert claimed
        out = cli(*args)
    assert out.returncode == 0, out.stderr
    assert statuses(tmp_path / "sweep") == {first.name: "completed"}
    assert "skipped: another process is running this job" in out.stdout
    ran = (first / "metrics.json").stat().st_mtime_ns
    out = cli(*args)
    assert out.returncode == 0, out.stderr
    assert statuses(tmp_path / "sweep") == {first.name: "completed", held.name: "completed"}
    assert (first / "metrics.json").stat().st_mtime_ns == ran


def test_sweep_preset_needs_multirun(cli, tmp_path):
    assert_clean_error(cli("run", "experiment=amazon12"), tmp_path, "experiment=amazon12 defines a sweep", "-m")


def test_parallel_local_launcher_splits_the_cores(cli, tmp_path):
    from transfer_cli.hardware import available_cores

    terminal = {"TTY_COMPATIBLE": "1", "TTY_INTERACTIVE": "1", "NO_COLOR": "1"}  # rich draws as in a terminal
    out = cli("run", "-m", "hydra/launcher=local", "source=books", "target=dvd", "strategy=source_only,coral", *SMALL,
              env=terminal)
    assert out.returncode == 0, out.stderr
    runs = [json.loads(p.read_text()) for p in tmp_path.rglob("metrics.json")]
    assert sorted(r["strategy"] for r in runs) == ["coral", "source_only"]
    cores = available_cores()  # this process's cores (its affinity where the platform tells: not on macOS)
    assert all(r["threads"] == max(1, cores // 2) for r in runs)  # two jobs at a time share the cores
    # no progress bars from two jobs writing over each other; the epoch log lines remain
    assert not re.search(r"━ \d+/\d+", out.stdout) and "epoch 1/1" in out.stdout + out.stderr


def test_slurm_launcher_config_and_submitit(cli, tmp_path):
    out = cli("run", "--cfg", "hydra", "hydra/launcher=slurm", "hydra.launcher.partition=gpu")
    assert out.returncode == 0, out.stderr
    launcher = yaml.safe_load(out.stdout)["hydra"]["launcher"]
    assert launcher["_target_"].endswith("SlurmLauncher") and launcher["partition"] == "gpu"
    assert launcher["gpus_per_node"] == 1 and launcher["array_parallelism"] >= 1
    # the same plugin's local executor runs the job in a submitted process, as Slurm would
    out = cli("run", "-m", "hydra/launcher=submitit_local", "source=books", "target=dvd", *SMALL)
    assert out.returncode == 0, out.stderr
    assert list(statuses(tmp_path / "outputs").values()) == ["completed"]


def test_optuna_maximises_a_label_free_validator(cli, tmp_path):
    out = cli("run", "-m", "experiment=optuna", "hydra.sweeper.n_trials=2", "selection=entropy", "source=books",
              "target=dvd", *SMALL)
    assert out.returncode == 0, out.stderr
    runs = [json.loads(p.read_text()) for p in tmp_path.rglob("metrics.json")]
    assert len(runs) == 2
    for run in runs:
        assert run["label_free_score"] == -run["target_entropy"] and run["selection"] == "entropy"
    (results,) = tmp_path.rglob("optimization_results.yaml")
    best = yaml.safe_load(results.read_text())
    assert best["best_value"] == max(r["label_free_score"] for r in runs)
    assert set(best["best_params"]) == {"train.lr"}  # train.epochs, fixed on the command line, is not searched
