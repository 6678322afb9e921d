"""`transfer analyze`: the proxy A-distance convention, and the command on saved runs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from transfer_cli.analyze import proxy_a_distance

from .conftest import SMALL
from .test_errors import assert_clean_error


def test_proxy_a_distance_convention():
    rng = np.random.default_rng(0)
    same = proxy_a_distance(rng.normal(size=(400, 8)), rng.normal(size=(400, 8)))
    apart = proxy_a_distance(rng.normal(size=(400, 8)), rng.normal(size=(400, 8)) + 5)
    assert 0 <= same < 0.3 and apart == pytest.approx(2.0)


def test_analyze_source_only_and_dann_runs(cli, tmp_path):
    out = cli("run", "-m", "strategy=source_only,dann", "source=books", "target=dvd", "train.save_model=true", *SMALL)
    assert out.returncode == 0, out.stderr
    runs = sorted(str(p.parent) for p in tmp_path.rglob("model.pt"))
    out = cli("analyze", *runs, "--max-examples", "24")
    assert out.returncode == 0, out.stderr
    assert "proxy A-distance" in out.stdout and "dann" in out.stdout and "source_only" in out.stdout
    for run in runs:
        analysis = json.loads((tmp_path / run / "analysis.json").read_text())
        assert 0 <= analysis["pad_before"] <= 2 and 0 <= analysis["pad_after"] <= 2
        assert analysis["source_examples"] == analysis["target_examples"] == 24
        assert (tmp_path / run / "analysis_tsne.png").read_bytes()[:4] == b"\x89PNG"


def test_analyze_errors(cli, tmp_path):
    assert_clean_error(cli("analyze", str(tmp_path)), tmp_path, "not a run folder")
    out = cli("run", "source=books", "target=dvd", *SMALL)
    (run,) = [p.parent for p in tmp_path.rglob("metrics.json")]
    out = cli("analyze", str(run))
    assert out.returncode == 2 and "train.save_model=true" in out.stderr
