"""`transfer analyze`: the proxy A-distance convention, and the command on saved runs."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from transfer_cli.distance import proxy_a_distance

from .test_errors import assert_clean_error


def test_proxy_a_distance_convention():
    rng = np.random.default_rng(0)
    same = proxy_a_distance(rng.normal(size=(400, 8)), rng.normal(size=(400, 8)))
    apart = proxy_a_distance(rng.normal(size=(400, 8)), rng.normal(size=(400, 8)) + 5)
    assert 0 <= same < 0.3 and apart == pytest.approx(2.0)


def test_analyze_source_only_and_dann_runs(cli, saved_runs):
    out = cli("analyze", *map(str, saved_runs), "--max-examples", "20")  # the slice's source validation: 20 reviews
    assert out.returncode == 0, out.stderr
    assert "proxy A-distance" in out.stdout and "dann" in out.stdout and "source_only" in out.stdout
    before = set()
    for run in saved_runs:
        analysis = json.loads((run / "analysis.json").read_text())
        assert analysis["source_examples"] == analysis["target_examples"] == 20
        # half of the 40 examples held out: the classifier's error moves in steps of 1/20, the PAD in steps of 0.2
        for pad in (analysis["pad_before"], analysis["pad_after"]):
            assert pad / 0.2 == pytest.approx(round(pad / 0.2))
        assert analysis["pad_change"] == pytest.approx(analysis["pad_after"] - analysis["pad_before"])
        before.add(analysis["pad_before"])
        assert (run / "analysis_tsne.png").read_bytes()[:4] == b"\x89PNG"
    assert len(before) == 1  # "before" is the same untrained model, whatever the strategy


def test_analyze_errors(cli, tmp_path, saved_runs):
    assert_clean_error(cli("analyze", str(tmp_path)), tmp_path, "not a run folder")
    run = tmp_path / "run"  # a run saved without its model
    shutil.copytree(saved_runs[0], run, ignore=shutil.ignore_patterns("model"))
    out = cli("analyze", str(run))
    assert out.returncode == 2 and "train.save_model=true" in out.stderr
