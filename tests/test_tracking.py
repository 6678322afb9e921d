"""Experiment tracking (logger=tensorboard | mlflow | csv): real CLI runs whose trackers read back the run's
history.csv and config; a sweep's jobs under one experiment; the CSV tracker's rerun rule; a missing package."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import yaml

from transfer_cli.config import Logger
from transfer_cli.errors import TransferError
from transfer_cli.training import tracking

from .conftest import SMALL

RUN = [*SMALL, "source=books", "target=dvd", "train.epochs=2"]  # two epochs: steps 1 and 2


@pytest.fixture(autouse=True)
def own_stores(cli_env):
    """The CLI's trackers use their defaults, whatever this shell sets."""
    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID", "MLFLOW_TAGS"):
        cli_env.pop(key, None)


def logged(folder: Path):
    """What the loop logs each epoch: the numeric columns of each history row (step = row number, from 1)."""
    history = pd.read_csv(folder / "history.csv").drop(columns=["selected"], errors="ignore")
    numeric = history.select_dtypes("number")
    return {step: {k: v for k, v in row.items() if not math.isnan(v)}
            for step, row in enumerate(numeric.to_dict("records"), start=1)}


def the_run(tmp_path: Path) -> Path:
    (history,) = (tmp_path / "outputs").glob("2*/*/history.csv")
    return history.parent


def jobs(tmp_path: Path):
    (sweep,) = (tmp_path / "outputs" / "multirun").glob("*/*")
    return sweep, sorted(p.parent for p in sweep.glob("*/history.csv"))


def test_tensorboard_logs_each_epoch_and_the_config(cli, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = cli("run", *RUN, "logger=tensorboard")
    assert out.returncode == 0, out.stderr
    folder = the_run(tmp_path)
    expected = logged(folder)
    assert len(expected) == 2
    assert {"train_loss", "source_val_accuracy", "target_test_accuracy", "target_snd"} <= set(expected[1])
    logdir = tmp_path / "outputs" / "tensorboard" / folder.relative_to(tmp_path / "outputs")
    events = EventAccumulator(str(logdir), size_guidance={"scalars": 0})
    events.Reload()
    assert set(events.Tags()["scalars"]) == set(expected[1])
    for key in expected[1]:
        assert [(e.step, e.value) for e in events.Scalars(key)] == [
            (step, pytest.approx(row[key], rel=1e-6, abs=1e-7)) for step, row in expected.items()]  # float32
    (hparams,) = logdir.glob("*/hparams.yml")
    config = yaml.safe_load(hparams.read_text())
    assert config["model.name"] == "tiny" and config["train.epochs"] == 2 and config["logger"] == "tensorboard"
    assert config["source.books.labels"] == '["negative", "positive"]'


def test_mlflow_logs_each_epoch_and_the_config(cli, tmp_path):
    from mlflow import MlflowClient

    out = cli("run", *RUN, "logger=mlflow", "seed=3")
    assert out.returncode == 0, out.stderr
    folder = the_run(tmp_path)
    client = MlflowClient(f"sqlite:///{(tmp_path / 'outputs' / 'mlflow.db').as_posix()}")
    experiment = client.get_experiment_by_name("runs")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == folder.relative_to(tmp_path / "outputs").as_posix()
    assert run.info.status == "FINISHED" and run.data.tags["output_dir"] == str(folder)
    params = run.data.params
    assert params["seed"] == "3" and params["model.name"] == "tiny" and params["strategy.name"] == "source_only"
    assert params["train.epochs"] == "2" and params["logger"] == "mlflow" and params["data.max_length"] == "64"
    expected = logged(folder)
    assert set(run.data.metrics) == set(expected[1])
    for key in expected[1]:
        history = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
        assert history == [(step, pytest.approx(row[key])) for step, row in expected.items()]


def test_csv_logs_each_epoch_and_the_config(cli, tmp_path):
    out = cli("run", *RUN, "logger=csv")
    assert out.returncode == 0, out.stderr
    folder = the_run(tmp_path)
    name = folder.relative_to(tmp_path / "outputs").as_posix()
    metrics = pd.read_csv(tmp_path / "outputs" / "csv" / "metrics.csv")
    assert list(metrics["run"]) == [name, name] and list(metrics["step"]) == [1, 2]
    expected = logged(folder)
    assert set(metrics.columns) == {"run", "step", *expected[1]}
    for _, row in metrics.iterrows():
        assert {k: row[k] for k in expected[row["step"]]} == expected[row["step"]]  # exact: both written as repr
    params = pd.read_csv(tmp_path / "outputs" / "csv" / "params.csv")
    assert list(params["run"]) == [name]
    assert params.loc[0, "model.name"] == "tiny" and params.loc[0, "train.epochs"] == 2
    assert params.loc[0, "logger"] == "csv"


@pytest.mark.parametrize("logger", ["mlflow", "csv"])  # tensorboard: same root rule as csv
def test_sweep_jobs_are_runs_of_one_experiment(cli, tmp_path, logger):
    out = cli("run", "-m", *SMALL, "source=books", "target=dvd", "seed=0,1", f"logger={logger}")
    assert out.returncode == 0, out.stderr
    sweep, folders = jobs(tmp_path)
    assert len(folders) == 2
    names = {f.name: f for f in folders}  # a job's run: its folder in the sweep (seed=0,...)
    if logger == "mlflow":
        from mlflow import MlflowClient

        client = MlflowClient(f"sqlite:///{(tmp_path / 'outputs' / 'mlflow.db').as_posix()}")
        experiments = {e.name for e in client.search_experiments()} - {"Default"}
        assert experiments == {sweep.relative_to(tmp_path / "outputs").as_posix()}  # multirun/DATE/TIME
        runs = client.search_runs([client.get_experiment_by_name(experiments.pop()).experiment_id])
        assert {r.info.run_name for r in runs} == set(names)
        for r in runs:
            assert r.data.params["seed"] == r.info.run_name.split("seed=")[1][0]
            expected = logged(names[r.info.run_name])
            assert r.data.metrics == pytest.approx(expected[len(expected)])
    else:
        metrics = pd.read_csv(sweep / "csv" / "metrics.csv")
        assert set(metrics["run"]) == set(names) and len(metrics) == 2
        params = pd.read_csv(sweep / "csv" / "params.csv").set_index("run")
        assert {run: params.loc[run, "seed"] for run in names} == {run: int(run.split("seed=")[1][0]) for run in names}
        for _, row in metrics.iterrows():
            assert {k: row[k] for k in logged(names[row["run"]])[1]} == logged(names[row["run"]])[1]
        assert not (tmp_path / "outputs" / "csv").exists()


def test_csv_tracker_replaces_a_rerun_jobs_rows(tmp_path):
    """A job run again in its folder (a sweep resumed, a run resumed from epoch k) logs its steps again: its rows from
    that step on are replaced, other runs' rows kept; a second call for one step adds to its row."""
    first, other = tracking.CsvTracker(tmp_path, "a"), tracking.CsvTracker(tmp_path, "b")
    for step in (1, 2, 3):
        first.log({"loss": step}, step=step)
        other.log({"loss": 10 * step}, step=step)
    again = tracking.CsvTracker(tmp_path, "a")  # the rerun's process
    again.log({"loss": 0.5}, step=2)
    again.log({"acc": 0.9}, step=2)
    rows = pd.read_csv(tmp_path / "metrics.csv")
    assert rows[rows.run == "a"][["step", "loss", "acc"]].fillna(-1).values.tolist() == [[1, 1, -1], [2, 0.5, 0.9]]
    assert rows[rows.run == "b"]["loss"].tolist() == [10, 20, 30]
    again.store_init_configuration({"train.lr": 0.1, "note": None})
    again.store_init_configuration({"train.lr": 0.2, "note": None})
    params = pd.read_csv(tmp_path / "params.csv")
    assert params["run"].tolist() == ["a"] and params["train.lr"].tolist() == [0.2]


@pytest.mark.parametrize("logger, module",
                         [("tensorboard", "tensorboard"), ("mlflow", "mlflow"), ("mlflow", "alembic")])
def test_a_missing_package_names_the_install(monkeypatch, tmp_path, logger, module):
    """Accelerate would drop a tracker whose package is missing without a word; we stop and say what to install."""
    real = tracking.find_spec
    monkeypatch.setattr(tracking, "find_spec", lambda name: None if name == module else real(name))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = SimpleNamespace(logger=Logger(logger), paths=SimpleNamespace(output_dir=str(tmp_path)))
    with pytest.raises(TransferError, match=rf'logger={logger} needs {module}, .*pip install "\.\[tracking\]"') as e:
        tracking.accelerator_options(cfg, tmp_path / "run")
    assert "\n" not in str(e.value)
    assert tracking.accelerator_options(SimpleNamespace(logger=Logger.none), tmp_path) == {}
