"""`transfer report`: aggregation over seeds, deltas, the negative-transfer flag, failed and running runs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from .test_errors import assert_clean_error


def fake_run(root: Path, name: str, status: str = "completed", error: str = "", overrides=(), **metrics) -> Path:
    folder = root / name
    (folder / ".hydra").mkdir(parents=True)
    extra = {"error": error} if error else {"finished": f"2026-11-25T10:00:0{name}"}
    (folder / "status.json").write_text(json.dumps({"status": status, **extra}))
    lines = [f"strategy={metrics.get('strategy', 'dann')}", f"seed={metrics.get('seed', 0)}", *overrides]
    (folder / ".hydra" / "overrides.yaml").write_text("".join(f"- {line}\n" for line in lines))
    if status == "completed":
        full = {"strategy": "dann", "peft": "none", "model": "minilm", "source": "books", "target": "dvd",
                "protocol": "inductive", "seed": 0, "oracle": False, "target_test_accuracy": 0.5, **metrics}
        (folder / "metrics.json").write_text(json.dumps(full))
        (folder / "history.csv").write_text("phase,epoch,source_val_accuracy,target_test_accuracy\n"
                                           f"train,1,0.7,0.6\ntrain,2,0.8,{full['target_test_accuracy']}\n")
    return folder


def test_report_aggregates_a_partial_sweep(cli, tmp_path):
    sweep = tmp_path / "sweep"
    fake_run(sweep, "0", strategy="source_only", seed=0, target_test_accuracy=0.80)
    fake_run(sweep, "1", strategy="source_only", seed=1, target_test_accuracy=0.82)
    fake_run(sweep, "2", strategy="dann", seed=0, target_test_accuracy=0.70)
    fake_run(sweep, "3", strategy="dann", seed=1, target_test_accuracy=0.80)
    fake_run(sweep, "4", strategy="dann", seed=0, target_test_accuracy=0.78)  # a rerun of seed 0: the latest counts
    fake_run(sweep, "5", strategy="target_oracle", seed=0, oracle=True, target_test_accuracy=0.90)
    fake_run(sweep, "6", strategy="mmd", seed=0, target="kitchen", target_test_accuracy=0.86)
    fake_run(sweep, "a", strategy="source_only", seed=0, target="electronics", target_test_accuracy=0.80)
    fake_run(sweep, "b", strategy="source_only", seed=1, target="electronics", target_test_accuracy=0.82)
    fake_run(sweep, "c", strategy="coral", seed=0, target="electronics", target_test_accuracy=0.80)
    fake_run(sweep, "d", strategy="coral", seed=1, target="electronics", target_test_accuracy=0.81)
    fake_run(sweep, "7", status="failed", error="TransferError: the data ran away")
    fake_run(sweep, "8", status="running")

    out = cli("report", str(sweep), "--out", str(tmp_path / "report"))
    assert out.returncode == 0, out.stderr
    assert "negative transfer" in out.stdout and "the data ran away" in out.stdout

    rows = {(r["strategy"], r["target"]): r for r in csv.DictReader((tmp_path / "report" / "report.csv").open())}
    dann = rows[("dann", "dvd")]
    assert dann["seeds"] == "2" and abs(float(dann["mean"]) - 0.79) < 1e-9 and abs(float(dann["std"]) - 0.0141421) < 1e-6
    assert abs(float(dann["delta_vs_source_only"]) + 0.02) < 1e-9 and abs(float(dann["delta_vs_oracle"]) + 0.11) < 1e-9
    assert dann["negative_transfer"] == "True"
    assert rows[("target_oracle", "dvd")]["negative_transfer"] == "False"  # an oracle is never flagged
    assert rows[("mmd", "kitchen")]["delta_vs_source_only"] == ""  # no source_only on that pair

    md = (tmp_path / "report" / "report.md").read_text()
    assert "| dann | books→dvd | 2 | 0.790 ± 0.014 | -0.020 | -0.110 | negative transfer |" in md
    # -0.005 is within one standard error of the difference, sqrt(0.0141²/2 + 0.0071²/2) = 0.011: said so
    assert "| coral | books→electronics | 2 | 0.805 ± 0.007 | -0.005 |  | negative transfer (within 1 s.e.) |" in md
    assert "| target_oracle (ORACLE) |" in md
    assert "## Failed or incomplete runs" in md and "running or interrupted" in md and "strategy=dann seed=0" in md
    assert "| strategy | books→dvd | books→electronics | books→kitchen | average |" in md
    for figure in ("report_heatmap.png", "report_curves.png"):
        assert (tmp_path / "report" / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    runs = list(csv.DictReader((tmp_path / "report" / "runs.csv").open()))
    assert len(runs) == 10  # completed, the rerun counted once

    # piped into a file, the tables print whole, however narrow the terminal it came from
    piped = cli("report", str(sweep), "--out", str(tmp_path / "report"), env={"COLUMNS": "60"}).stdout
    assert "target_oracle (ORACLE)" in piped and "negative transfer (within 1 s.e.)" in piped


def test_report_errors(cli, tmp_path):
    assert_clean_error(cli("report", str(tmp_path / "nowhere")), tmp_path, "no such folder")
    (tmp_path / "empty").mkdir()
    assert_clean_error(cli("report", str(tmp_path / "empty")), tmp_path, "no runs under")
    fake_run(tmp_path / "runs", "0")
    assert_clean_error(cli("report", str(tmp_path / "runs"), "--metric", "speed"), tmp_path / "empty", "no run has the metric 'speed'")


def test_report_tells_apart_runs_that_differ_in_other_overrides(cli, tmp_path):
    """A sweep over strategy.k (same seed) is three configurations, not three seeds of one; each compares with the
    source_only of its own settings (data.max_length), and an override every run shares names none of them."""
    sweep = tmp_path / "sweep"
    shared = "data.max_source_train=100"
    for i, (k, accuracy) in enumerate([(8, 0.70), (16, 0.75), (64, 0.80)]):
        fake_run(sweep, str(i), strategy="setfit", overrides=[f"strategy.k={k}", shared, "data.max_length=128"],
                 target_test_accuracy=accuracy)
    fake_run(sweep, "5", strategy="source_only", overrides=[shared, "data.max_length=128"], target_test_accuracy=0.72)
    fake_run(sweep, "6", strategy="source_only", overrides=[shared, "data.max_length=64"], target_test_accuracy=0.60)
    out = cli("report", str(sweep), "--out", str(tmp_path / "report"))
    assert out.returncode == 0, out.stderr
    md = (tmp_path / "report" / "report.md").read_text()
    assert "| setfit strategy.k=8 data.max_length=128 | books→dvd | 1 | 0.700 ± 0.000 | -0.020 |" in md
    assert "| setfit strategy.k=64 data.max_length=128 | books→dvd | 1 | 0.800 ± 0.000 | +0.080 |" in md
    assert "| source_only data.max_length=64 | books→dvd | 1 | 0.600 ± 0.000 |" in md and shared not in md


def test_report_warns_when_runs_differ_in_precision(cli, tmp_path):
    """A sweep resumed on a machine where hardware.precision=auto chose bf16 mixes precisions: the report says so."""
    sweep = tmp_path / "sweep"
    fake_run(sweep, "0", strategy="source_only", seed=0, precision="fp32")
    fake_run(sweep, "1", strategy="source_only", seed=1, precision="fp32")
    out = cli("report", str(sweep), "--out", str(tmp_path / "report"))
    assert "Precision: fp32 in every run." in out.stdout and "differ in precision" not in out.stdout
    fake_run(sweep, "2", strategy="source_only", seed=2, precision="bf16")
    out = cli("report", str(sweep), "--out", str(tmp_path / "report"))
    assert out.returncode == 0, out.stderr
    assert "The runs differ in precision** (fp32 2, bf16 1)" in (tmp_path / "report" / "report.md").read_text()


def test_report_names_the_cpu_kinds_the_runs_trained_on(cli, tmp_path):
    """A sweep shared out between an AVX512 and an AVX2 machine: the report counts the runs of each."""
    sweep = tmp_path / "sweep"
    for name, capability in (("0", "AVX512"), ("1", "AVX512"), ("2", "AVX2")):
        fake_run(sweep, name, strategy="source_only", seed=int(name), precision="fp32", cpu_capability=capability)
    out = cli("report", str(sweep), "--out", str(tmp_path / "report"))
    assert out.returncode == 0, out.stderr
    assert "Precision: fp32 in every run. CPU capability: AVX512 2, AVX2 1." in (tmp_path / "report" / "report.md").read_text()
