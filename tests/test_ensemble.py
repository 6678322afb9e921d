"""Ensembles of saved runs: every run's test predictions, `transfer ensemble` (averaging, refusals), the seed_ensemble
preset's end-of-sweep ensemble, and an ensemble exported and predicting as one model."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from transfer_cli.deploy.export import export
from transfer_cli.deploy.runtime import Classifier
from transfer_cli.ensemble import build
from transfer_cli.ensemble import main as ensemble_main
from transfer_cli.errors import TransferError

from .conftest import SMALL


def predictions(folder: Path) -> pd.DataFrame:
    return pd.read_csv(folder / "test_predictions.csv")


def probabilities(folder: Path) -> np.ndarray:
    table = predictions(folder)
    return table[[c for c in table.columns if c.startswith("p_")]].to_numpy()


def metrics(folder: Path) -> dict:
    return json.loads((folder / "metrics.json").read_text())


def split_of(run: Path, data_dir: Path):
    """The texts and labels of a run's target test split, in the split's order."""
    from omegaconf import OmegaConf

    from transfer_cli.config import RunConfig
    from transfer_cli.data import target_test_texts

    cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(RunConfig), OmegaConf.load(run / ".hydra" / "config.yaml")))
    return target_test_texts(cfg, data_dir)


def write_test_csv(run: Path, data_dir: Path, path: Path) -> None:
    """The run's target test split as a CSV (review, gold)."""
    texts, labels = split_of(run, data_dir)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["review", "gold"])
        writer.writerows(zip(texts, labels.tolist()))


def predicted(path: Path) -> np.ndarray:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return np.array([[row["prob_negative"], row["prob_positive"]] for row in rows])


def test_a_run_writes_its_test_predictions(saved_runs, data_dir):
    """test_predictions.csv: one row per target test example in the split's order, scored as metrics.json says, and
    the probabilities of the run's selected (saved) model on those very texts."""
    run = next(r for r in saved_runs if "dann" in r.name)
    table, m = predictions(run), metrics(run)
    assert list(table.columns) == ["index", "label", "prediction", "p_negative", "p_positive"]
    assert len(table) == m["target_test_size"] == 32 and list(table["index"]) == list(range(32))
    assert (table.prediction == probabilities(run).argmax(1)).all()
    assert np.allclose(probabilities(run).sum(1), 1)
    assert (table.prediction == table.label).mean() == m["target_test_accuracy"]
    assert len(m["test_split_digest"]) == 16
    texts, labels = split_of(run, data_dir)
    assert (labels == table.label).all()
    model = Classifier(run)  # the saved model, as `transfer predict` loads it
    assert np.abs(model.predict(model.tokenize(texts), 16)[0] - probabilities(run)).max() < 1e-5


def test_an_ensemble_of_identical_runs_equals_the_run_and_of_two_runs_averages_them(saved_runs, cli, tmp_path):
    """Two identical runs (one run's folder, copied) ensemble into that run: the same probabilities, predictions and
    scores. Two different runs on one test split ensemble into the mean of their probabilities; `transfer report`
    lists the ensemble beside its members."""
    run = next(r for r in saved_runs if "dann" in r.name)
    shutil.copytree(run, tmp_path / "copy")
    out = cli("ensemble", str(run), str(tmp_path / "copy"), "--out", str(tmp_path / "same"))
    assert out.returncode == 0, out.stderr
    assert "mean of the members" in out.stdout and "ensemble (mean probabilities)" in out.stdout
    same, m = metrics(tmp_path / "same"), metrics(run)
    assert np.array_equal(probabilities(tmp_path / "same"), probabilities(run))
    assert (predictions(tmp_path / "same").prediction == predictions(run).prediction).all()
    assert same["target_test_accuracy"] == m["target_test_accuracy"] == same["members_mean_accuracy"]
    assert same["target_test_f1_macro"] == m["target_test_f1_macro"] and same["ensemble_gain"] == 0
    assert same["strategy"] == "ensemble(dann)" and same["seed"] == "0+0" and same["target"] == "dvd"
    assert json.loads((tmp_path / "same" / "status.json").read_text())["status"] == "completed"

    # source_only and dann: a multirun folder stands for its completed runs
    ensemble_main([str(saved_runs[0].parent), "--out", str(tmp_path / "two")])
    mean = np.mean([probabilities(r) for r in saved_runs], axis=0)
    assert np.abs(mean - probabilities(saved_runs[0])).max() > 1e-3  # the members differ
    assert np.allclose(probabilities(tmp_path / "two"), mean, atol=1e-12)
    two = metrics(tmp_path / "two")
    labels = predictions(run).label.to_numpy()
    assert two["target_test_accuracy"] == (mean.argmax(1) == labels).mean()
    assert two["members_mean_accuracy"] == np.mean([metrics(r)["target_test_accuracy"] for r in saved_runs])
    assert sorted(Path(x["folder"]) for x in two["members"]) == [r.resolve() for r in saved_runs]

    from transfer_cli.report import collect, summarise

    runs, _ = collect([saved_runs[0].parent, tmp_path / "two"])
    summary = summarise(runs, "target_test_accuracy").set_index("strategy")
    assert set(summary.index) == {"source_only", "dann", "ensemble(dann+source_only)"}
    assert summary.loc["ensemble(dann+source_only)", "pair"] == "books→dvd"  # beside its members, against source_only:
    assert summary.loc["ensemble(dann+source_only)", "delta_vs_source_only"] == two["target_test_accuracy"] - \
        metrics(saved_runs[1])["target_test_accuracy"]


def test_runs_on_different_test_splits_are_refused(saved_runs, cli, tmp_path):
    """Runs of seeds 0 and 1 (no split_seed) were tested on different examples: one line, exit 2, both runs named,
    nothing written. So are a single run, a run from before test predictions, an unfinished run, another target and
    a non-empty --out."""
    run = saved_runs[0]
    out = cli("run", "source=books", "target=dvd", "seed=1", *SMALL, "hydra.run.dir=seed1")
    assert out.returncode == 0, out.stderr
    other = tmp_path / "seed1"
    out = cli("ensemble", str(run), str(other), "--out", str(tmp_path / "ens"))
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    (line,) = [line for line in out.stderr.splitlines() if line.strip()]
    assert "different test splits" in line and str(run) in line and str(other) in line and "split_seed" in line
    assert not (tmp_path / "ens").exists() and not list(tmp_path.glob(".ens*"))

    def refused(runs, *fragments, out=tmp_path / "ens"):
        with pytest.raises(TransferError) as error:
            build(runs, out)
        assert all(f in str(error.value) for f in fragments), str(error.value)
        assert not (tmp_path / "ens").exists()

    refused([run], "at least 2")
    shutil.copytree(run, tmp_path / "old", ignore=shutil.ignore_patterns("test_predictions.csv"))
    refused([run, tmp_path / "old"], str(tmp_path / "old"), "predates", "run it again")
    shutil.copytree(run, tmp_path / "failed")
    (tmp_path / "failed" / "status.json").write_text('{"status": "failed"}')
    refused([run, tmp_path / "failed"], str(tmp_path / "failed"), "has not completed")
    shutil.copytree(run, tmp_path / "kitchen")
    (tmp_path / "kitchen" / "metrics.json").write_text(json.dumps({**metrics(run), "target": "kitchen"}))
    refused([run, tmp_path / "kitchen"], "different targets")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    refused([run, saved_runs[1]], "not empty", out=tmp_path / "full")
    assert [p.name for p in (tmp_path / "full").iterdir()] == ["keep.txt"]


def test_the_seed_ensemble_preset_ends_with_an_ensemble(cli, tmp_path):
    """experiment=seed_ensemble: the seeds share one test split (data.split_seed), and the sweep ends with their
    ensemble in <sweep dir>/ensemble."""
    out = cli("run", "-m", "experiment=seed_ensemble", "seed=0,1", "source=books", "target=dvd", *SMALL,
              "hydra.sweep.dir=sweep")
    assert out.returncode == 0, out.stderr
    jobs = sorted(p.parent for p in (tmp_path / "sweep").glob("*/metrics.json") if p.parent.name != "ensemble")
    assert len(jobs) == 2 and len({metrics(j)["test_split_digest"] for j in jobs}) == 1
    ensemble = metrics(tmp_path / "sweep" / "ensemble")
    assert ensemble["strategy"] == "ensemble(source_only)" and ensemble["seed"] == "0+1"
    assert ensemble["members_count"] == 2 and ensemble["test_split_digest"] == metrics(jobs[0])["test_split_digest"]
    assert "ensemble(source_only): books -> dvd (2 members)" in out.stdout


def test_an_ensemble_exports_and_predicts_as_one_model(saved_runs, data_dir, cli, tmp_path):
    """Members saved with train.save_model=true: the ensemble exports as members/N/ + ensemble.json, and predict gives
    the mean of the members' probabilities (the ensemble's test predictions) and its accuracy."""
    build(saved_runs, tmp_path / "ens")
    export(tmp_path / "ens", tmp_path / "exported")  # (`transfer export` calls this)
    exported = tmp_path / "exported"
    assert json.loads((exported / "ensemble.json").read_text())["members"] == ["members/0", "members/1"]
    assert (exported / "members" / "1" / "model.safetensors").exists() and (exported / "drift_reference.safetensors").exists()
    assert "# ensemble(" in (exported / "README.md").read_text()
    write_test_csv(saved_runs[0], data_dir, tmp_path / "test.csv")
    out = cli("predict", str(exported), "--input", str(tmp_path / "test.csv"), "--text-column", "review",
              "--label-column", "gold", "--output", str(tmp_path / "p.jsonl"))
    assert out.returncode == 0, out.stderr
    assert np.abs(predicted(tmp_path / "p.jsonl") - probabilities(tmp_path / "ens")).max() < 1e-5
    assert f"accuracy {metrics(tmp_path / 'ens')['target_test_accuracy']:.4f}" in out.stderr
