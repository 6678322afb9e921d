"""Runs that survive interruption: kill -9 and SIGTERM, then the same command (or resume=auto) continues from the
checkpoint to the same metrics as an uninterrupted run; sweep jobs resume; a launcher's handler gets the signal."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import TRANSFER

# The tiny model on the generated demo domains (it learns them): 30 batches an epoch, fp32, deterministic.
RUN = ["source=demo_gadgets", "target=demo_films", "model=tiny", "data.max_length=48", "data.max_source_train=120",
       "data.max_source_val=60", "data.max_target_pool=64", "data.max_target_test=100", "train.batch_size=4",
       "train.lr=1e-3", "train.epochs=3", "train.patience=5", "hardware=cpu_fp32", "hardware.deterministic=true"]
TIMINGS = ("seconds", "per_second", "output_dir")


def comparable(folder: Path) -> dict:
    metrics = json.loads((folder / "metrics.json").read_text())
    return {k: v for k, v in metrics.items() if not any(t in k for t in TIMINGS)}


def start(args, cwd: Path, env: dict, prefix=()) -> subprocess.Popen:
    return subprocess.Popen([*(prefix or TRANSFER), *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for(predicate, process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not predicate():
        assert process.poll() is None, process.communicate()
        assert time.time() < deadline, "timed out"
        time.sleep(0.02)


def in_training(folder: Path):
    return lambda: "phase 'train'" in ((folder / "run.log").read_text() if (folder / "run.log").exists() else "")


def history_rows(folder: Path) -> int:
    path = folder / "history.csv"
    return len(list(csv.DictReader(path.open()))) if path.exists() else 0


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, data_dir, cache_dir) -> dict:
    """The metrics of RUN without interruption; its checkpoint is pruned on completion."""
    folder = tmp_path_factory.mktemp("uninterrupted")
    env = {**os.environ, "TRANSFER_DATA_DIR": str(data_dir), "TRANSFER_CACHE_DIR": str(cache_dir)}
    out = subprocess.run([*TRANSFER, "run", *RUN, f"hydra.run.dir={folder}"], env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert not (folder / "checkpoint").exists()
    return comparable(folder)


def test_kill_9_then_the_same_command_gives_the_same_metrics(cli, cli_env, tmp_path, uninterrupted):

    folder = tmp_path / "outputs" / "killed"
    process = start(["run", *RUN, f"hydra.run.dir={folder}"], tmp_path, cli_env)
    wait_for(lambda: history_rows(folder) >= 1, process)  # history.csv grows epoch by epoch
    process.kill()
    process.wait()
    assert history_rows(folder) == 1
    status = json.loads((folder / "status.json").read_text())
    assert status["status"] == "running" and status["pid"] == process.pid  # nobody could say otherwise...
    report = cli("report", str(folder))  # ...but the report sees the process is gone
    assert "interrupted" in report.stdout and "is gone" in report.stdout, report.stdout

    out = cli("run", *RUN, f"hydra.run.dir={folder}")
    assert out.returncode == 0, out.stderr
    assert "resuming from" in (folder / "run.log").read_text()
    assert comparable(folder) == uninterrupted
    assert history_rows(folder) == 3 and not (folder / "checkpoint").exists()


def test_sigterm_mid_epoch_checkpoints_and_resume_auto_continues(cli, cli_env, tmp_path, uninterrupted):
    process = start(["run", *RUN], tmp_path, cli_env)
    wait_for(lambda: any(in_training(f.parent)() for f in (tmp_path / "outputs").rglob("run.log")), process)
    (folder,) = [f.parent for f in (tmp_path / "outputs").rglob("run.log")]
    process.send_signal(signal.SIGTERM)  # it lands in the first batch, which ends before the loop stops
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr
    assert "interrupted by SIGTERM; run the same command again to resume" in stderr and "Traceback" not in stderr
    status = json.loads((folder / "status.json").read_text())
    assert status["status"] == "interrupted" and status["signal"] == "SIGTERM" and status["epochs_completed"] == 0
    position = json.loads((folder / "checkpoint" / "position.json").read_text())
    assert position["state"]["epoch"] == 0 and 0 < position["state"]["batch"] < 30  # mid-epoch
    assert not (folder / "metrics.json").exists()

    out = cli("run", *RUN, "resume=auto", "train.keep_checkpoints=true")
    assert out.returncode == 0, out.stderr
    assert json.loads((folder / "status.json").read_text())["status"] == "completed"  # in the interrupted folder
    assert f"resuming from outputs/{folder.parent.name}/{folder.name}/checkpoint" in (folder / "run.log").read_text()
    assert (folder / "checkpoint" / "position.json").exists()  # kept, as asked
    assert comparable(folder) == uninterrupted


def test_resume_path_errors(cli, tmp_path):
    out = cli("run", *RUN, f"resume={tmp_path}")
    assert out.returncode == 2 and "no run folder with a checkpoint there" in out.stderr


def test_sweep_job_requeued_by_its_launcher_resumes_from_its_checkpoint(cli_env, tmp_path):
    """As under Slurm with submitit: SIGUSR2 before the time limit; the launcher's own handler (here a stand-in
    that records the call and exits) requeues the job after the loop has checkpointed; the rerun resumes it."""
    sweep = tmp_path / "sweep"
    marker = tmp_path / "requeued"
    launcher = ("import signal, sys, pathlib\n"
                f"def requeue(signum, frame):\n    pathlib.Path({str(marker)!r}).write_text('requeued')\n    sys.exit(3)\n"
                "signal.signal(signal.SIGUSR2, requeue)\n"
                "from transfer_cli.cli import main\nmain()\n")
    args = ["run", "-m", *RUN, "seed=0", f"hydra.sweep.dir={sweep}"]
    process = start(args, tmp_path, cli_env, prefix=[sys.executable, "-c", launcher])
    wait_for(lambda: any(in_training(f.parent)() for f in sweep.rglob("run.log")), process)
    process.send_signal(signal.SIGUSR2)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 3, stderr  # the launcher's exit, after our checkpoint
    assert marker.read_text() == "requeued"
    (job,) = [f.parent for f in sweep.rglob("status.json")]
    assert json.loads((job / "status.json").read_text())["status"] == "interrupted"
    assert (job / "checkpoint" / "position.json").exists()

    out = subprocess.run([*TRANSFER, *args], cwd=tmp_path, env=cli_env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert "resuming from" in (job / "run.log").read_text()
    assert json.loads((job / "status.json").read_text())["status"] == "completed"


def test_a_run_killed_in_a_later_phase_rebuilds_the_earlier_phases(cli, cli_env, tmp_path):
    """Self-training labels the target pool with the model each phase ends with: a run resumed in round 2 must
    label round 1's and round 2's pool from the saved end weights of the source phase and of round 1."""
    run = ["strategy=self_training", "strategy.threshold=0.5", "strategy.round_epochs=2",
           *[a for a in RUN if not a.startswith("train.epochs")], "train.epochs=2", "train.batch_size=8"]
    out = cli("run", *run, "hydra.run.dir=outputs/uninterrupted")
    assert out.returncode == 0, out.stderr
    assert history_rows(tmp_path / "outputs" / "uninterrupted") == 6  # 2 epochs each: source, round 1, round 2

    folder = tmp_path / "outputs" / "killed"
    process = start(["run", *run, f"hydra.run.dir={folder}"], tmp_path, cli_env)
    wait_for(lambda: history_rows(folder) >= 5, process)  # round 2's first epoch done
    process.kill()
    process.wait()
    out = cli("run", *run, f"hydra.run.dir={folder}")
    assert out.returncode == 0, out.stderr
    assert "resuming from" in (folder / "run.log").read_text()
    assert comparable(folder) == comparable(tmp_path / "outputs" / "uninterrupted")


def test_a_killed_run_that_averages_its_weights_resumes_to_the_same_metrics(cli, cli_env, tmp_path):
    """DANN averaging its weights past 30% of the phase (from step 28 of 90): the epoch-1 checkpoint holds the
    running mean of 3 steps, which the resumed run must go on with, not restart, to match the uninterrupted run."""
    run = [*RUN, "strategy=dann", "strategy.average_from=0.3"]
    out = cli("run", *run, "hydra.run.dir=outputs/uninterrupted")
    assert out.returncode == 0, out.stderr

    folder = tmp_path / "outputs" / "killed"
    process = start(["run", *run, f"hydra.run.dir={folder}"], tmp_path, cli_env)
    wait_for(lambda: history_rows(folder) >= 1, process)
    process.kill()
    process.wait()
    position = json.loads((folder / "checkpoint" / "position.json").read_text())
    assert position["state"]["averaged"] == 3 and (folder / "checkpoint" / "average.safetensors").exists()
    out = cli("run", *run, f"hydra.run.dir={folder}")
    assert out.returncode == 0, out.stderr
    assert "resuming from" in (folder / "run.log").read_text()
    assert comparable(folder) == comparable(tmp_path / "outputs" / "uninterrupted")
