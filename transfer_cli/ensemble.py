"""`transfer ensemble RUN... --out DIR`: average the class probabilities of saved runs into a run folder of its own.

Every completed run writes `test_predictions.csv` (its selected model's class probabilities on the target test split,
in the split's order) and `test_split_digest` in its metrics (a fingerprint of the split's token ids and labels). An
ensemble averages its members' probabilities (arithmetic mean), predicts the most probable class and scores it as a
run would. The members must share the target, the labels and the test split (the digest); anything else is refused
in one line, before anything is written. DIR becomes a run folder like any other (`metrics.json`, `status.json`,
`test_predictions.csv`) plus `members.json`, so that `transfer report` shows the ensemble beside its members: its
strategy is `ensemble(S)`, S the members' strategies joined with '+', its seed the members' seeds joined with '+', and
its `.hydra/overrides.yaml` the overrides all its members share (the report tells configurations apart by them).

`SeedEnsemble` is the Hydra callback of `experiment=seed_ensemble`: when a sweep ends, it ensembles the completed jobs
that differ only in their seed (into `<sweep dir>/ensemble`, or `<sweep dir>/ensemble/<group>` per group when the
sweep has several configurations).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
from hydra.experimental.callback import Callback

from .errors import TransferError
from .outputs import (MEMBERS, PREDICTIONS, SCHEMA_VERSION, now, read_json, read_overrides, staged_folder,
                      write_atomic, write_json, write_predictions)

STRATEGY = "ensemble"


@dataclass
class Member:
    folder: Path
    metrics: Dict[str, Any]
    names: List[str]  # the class names, from the p_<name> columns
    labels: np.ndarray  # the true class of each test example
    probabilities: np.ndarray  # examples × classes


def is_ensemble(folder: Path) -> bool:
    return (folder / MEMBERS).exists()


def expand(paths: List[Path]) -> List[Path]:
    """Run folders as given; a folder without a status.json (a multirun folder) stands for its completed runs, less
    any ensembles in it (they would count their members twice)."""
    runs: List[Path] = []
    for path in paths:
        if not path.is_dir():
            raise TransferError(f"no such run folder: {path}")
        if (path / "status.json").exists():
            runs.append(path)
            continue
        found = completed_runs(path)
        if not found:
            raise TransferError(f"no completed run under {path}; give run folders or a multirun folder")
        runs += found
    seen = set()
    for run in runs:
        if run.resolve() in seen:
            raise TransferError(f"run {run} is given twice; an ensemble counts each run once")
        seen.add(run.resolve())
    return runs


def completed_runs(root: Path) -> List[Path]:
    """The completed runs under a folder, ensembles left out."""
    return [f.parent for f in sorted(root.rglob("status.json"))
            if (read_json(f) or {}).get("status") == "completed" and not is_ensemble(f.parent)]


def load_member(folder: Path) -> Member:
    """A completed run's test predictions, or a one-line refusal that names the run."""
    if is_ensemble(folder):
        raise TransferError(f"{folder} is itself an ensemble; give its members instead (listed in its {MEMBERS})")
    status = read_json(folder / "status.json") or {}
    if status.get("status") != "completed":
        raise TransferError(f"run {folder} has not completed (status {status.get('status', 'missing')}); an ensemble "
                            "takes completed runs only")
    metrics = read_json(folder / "metrics.json")
    if not isinstance(metrics, dict):
        raise TransferError(f"run {folder} has no readable metrics.json; run it again")
    file = folder / PREDICTIONS
    if not file.exists() or "test_split_digest" not in metrics:
        raise TransferError(f"run {folder} has no {PREDICTIONS}: it predates them (transfer "
                            f"{metrics.get('transfer_version', '?')}); run it again to ensemble it")
    import pandas as pd

    try:
        table = pd.read_csv(file)
        columns = [c for c in table.columns if c.startswith("p_")]
        if not columns or list(table["index"]) != list(range(len(table))):
            raise ValueError("no probability columns, or rows out of order")
        probabilities = table[columns].to_numpy(dtype=np.float64)
        labels = table["label"].to_numpy(dtype=np.int64)
    except (ValueError, KeyError) as e:
        raise TransferError(f"run {folder}: {PREDICTIONS} is unreadable ({e}); run it again") from None
    return Member(folder, metrics, [c[2:] for c in columns], labels, probabilities)


def check(members: List[Member]) -> None:
    """Refuse members that were not tested on the same examples with the same classes."""
    if len(members) < 2:
        raise TransferError(f"an ensemble needs at least 2 completed runs; got {len(members)}")
    first = members[0]
    for other in members[1:]:
        a, b = first.folder, other.folder
        if other.metrics.get("target") != first.metrics.get("target"):
            raise TransferError(f"runs {a} and {b} have different targets ({first.metrics.get('target')} and "
                                f"{other.metrics.get('target')}); an ensemble's members share their target")
        if other.names != first.names:
            raise TransferError(f"runs {a} and {b} have different labels ({', '.join(first.names)} and "
                                f"{', '.join(other.names)})")
        if other.metrics["test_split_digest"] != first.metrics["test_split_digest"]:
            raise TransferError(f"runs {a} and {b} were tested on different test splits (digests "
                                f"{first.metrics['test_split_digest']} and {other.metrics['test_split_digest']}); "
                                "train the members with one data.split_seed (and the same data.* settings)")
        if len(other.labels) != len(first.labels) or (other.labels != first.labels).any():
            raise TransferError(f"runs {a} and {b} have the same test split digest but different labels in their "
                                f"{PREDICTIONS}; run them again")


def joined(values: List[Any], sep: str = "+") -> Any:
    """The members' common value, or their distinct values joined (in order of first appearance)."""
    distinct = list(dict.fromkeys(str(v) for v in values))
    return values[0] if len(distinct) == 1 else sep.join(distinct)


def combine(members: List[Member], started: Optional[float] = None) -> tuple:
    """(metrics, probabilities) of the ensemble: the mean of the members' probabilities, scored as a run is."""
    from sklearn.metrics import accuracy_score, f1_score

    from . import __version__

    probabilities = np.mean([m.probabilities for m in members], axis=0)
    labels, predicted = members[0].labels, probabilities.argmax(1)
    scores = {"accuracy": float(accuracy_score(labels, predicted)),  # as evaluate.classification_scores (no torch)
              "f1_macro": float(f1_score(labels, predicted, average="macro", zero_division=0))}
    m = [member.metrics for member in members]
    strategies = joined([x.get("strategy") for x in m])
    listed = [{"folder": str(member.folder.resolve()), "strategy": x.get("strategy"), "seed": x.get("seed"),
               "target_test_accuracy": x.get("target_test_accuracy"),
               "target_test_f1_macro": x.get("target_test_f1_macro")} for member, x in zip(members, m)]
    mean_accuracy = float(np.mean([x["target_test_accuracy"] for x in m]))
    metrics = {
        "schema_version": SCHEMA_VERSION,
        "status": "completed",
        "transfer_version": __version__,
        "model": joined([x.get("model") for x in m]),
        "strategy": f"{STRATEGY}({strategies})",
        "peft": joined([x.get("peft") or "none" for x in m]),
        "hardware": joined([x.get("hardware") for x in m]),
        "experiment": joined([x.get("experiment") for x in m]),
        "source": joined([x.get("source") for x in m], sep=","),
        "target": m[0]["target"],
        "protocol": joined([x.get("protocol") for x in m]),
        "oracle": any(bool(x.get("oracle")) for x in m),
        # summed: an upper bound on the distinct target labels the members saw (few-shot members draw their own)
        "target_labels_used": int(sum(x.get("target_labels_used") or 0 for x in m)),
        # the largest: members on one test split trained on one source split
        "source_labels_used": int(max(x.get("source_labels_used") or 0 for x in m)),
        "seed": "+".join(str(x.get("seed")) for x in m),
        "selection": joined([x.get("selection") for x in m]),
        "test_split_digest": m[0]["test_split_digest"],
        "target_test_size": len(labels),
        "target_test_accuracy": scores["accuracy"],
        "target_test_f1_macro": scores["f1_macro"],
        "members": listed,
        "members_count": len(members),
        "members_mean_accuracy": mean_accuracy,
        "members_mean_f1_macro": float(np.mean([x["target_test_f1_macro"] for x in m])),
        "ensemble_gain": scores["accuracy"] - mean_accuracy,  # the ensemble's accuracy over its members' mean
        "total_seconds": round(time.perf_counter() - started, 3) if started is not None else None,
    }
    return metrics, probabilities


def build(runs: List[Path], out: Path, replace: bool = False) -> Dict[str, Any]:
    """Check every member, then write the ensemble's run folder whole (staged, then renamed) into `out`. With
    `replace`, an earlier ensemble in `out` is replaced; otherwise `out` must be new or empty."""
    started = time.perf_counter()
    if out.exists() and any(out.iterdir()) and not (replace and is_ensemble(out)):
        raise TransferError(f"{out} exists and is not empty; choose a new --out folder or remove it")
    members = [load_member(run) for run in runs]
    check(members)
    metrics, probabilities = combine(members, started)
    metrics["output_dir"] = str(out.resolve())
    with staged_folder(out) as staging:
        shared = [o for o in read_overrides(members[0].folder)
                  if all(o in read_overrides(m.folder) for m in members[1:])]
        write_atomic(staging / ".hydra" / "overrides.yaml", "".join(f"- {o}\n" for o in shared))
        write_predictions(staging / PREDICTIONS, members[0].labels, probabilities, members[0].names)
        write_json(staging / MEMBERS, {"members": metrics["members"]})
        write_json(staging / "metrics.json", metrics)
        write_json(staging / "status.json", {"status": "completed", "time": now(), "finished": now()})
    return metrics


def print_summary(metrics: Dict[str, Any], out: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    from .console import print_table

    table = Table(title=f"{metrics['strategy']}: {metrics['source']} -> {metrics['target']}"
                        f" ({metrics['members_count']} members)" + (" (ORACLE)" if metrics["oracle"] else ""))
    for column in ("run", "strategy", "seed", "target_test_accuracy", "target_test_f1_macro"):
        table.add_column(column, justify="left" if column == "run" else "right")
    for member in metrics["members"]:
        table.add_row(Path(member["folder"]).name, str(member["strategy"]), str(member["seed"]),
                      f"{member['target_test_accuracy']:.4f}", f"{member['target_test_f1_macro']:.4f}")
    table.add_section()
    table.add_row("mean of the members", "", "", f"{metrics['members_mean_accuracy']:.4f}",
                  f"{metrics['members_mean_f1_macro']:.4f}")
    table.add_row("ensemble (mean probabilities)", "", "", f"{metrics['target_test_accuracy']:.4f}",
                  f"{metrics['target_test_f1_macro']:.4f}", style="bold")
    console = Console()
    print_table(table, console)
    console.print(f"ensemble: {out} ({metrics['ensemble_gain']:+.4f} accuracy over the members' mean)")


def main(argv: List[str]) -> None:
    parser = argparse.ArgumentParser(prog="transfer ensemble", description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path,
                        help="run folders, or multirun folders (their completed runs); at least 2 runs in all")
    parser.add_argument("--out", type=Path, required=True, help="the ensemble's run folder to write (new or empty)")
    args = parser.parse_args(argv)
    metrics = build(expand(args.runs), args.out)
    print_summary(metrics, args.out)


def seed_groups(sweep: Path) -> Dict[str, List[Path]]:
    """A sweep's completed jobs, grouped by their overrides less the seed: each group is one configuration's seeds."""
    from .config import job_folder

    groups: Dict[str, List[Path]] = {}
    for folder in completed_runs(sweep):
        rest = [o for o in read_overrides(folder) if not o.startswith("seed=")]
        groups.setdefault(job_folder(rest), []).append(folder)
    return groups


class SeedEnsemble(Callback):
    """`hydra.callbacks` entry of experiment=seed_ensemble: at the end of a sweep, ensemble each configuration's seeds.

    Hydra calls `on_multirun_end` only when every job returned (a failed job skips it); then run
    `transfer ensemble SWEEP_DIR --out SWEEP_DIR/ensemble` by hand. A refusal is reported in one line and never fails
    the sweep."""

    def __init__(self, folder: str = "ensemble"):
        self.folder = folder

    def on_multirun_end(self, config, **kwargs: Any) -> None:
        import sys

        sweep = Path(str(config.hydra.sweep.dir))
        groups = {name: runs for name, runs in seed_groups(sweep).items() if len(runs) >= 2}
        if not groups:
            print(f"transfer: no ensemble: fewer than 2 completed seeds of any configuration in {sweep}", file=sys.stderr)
            return
        for name, runs in groups.items():
            out = sweep / self.folder if len(groups) == 1 else sweep / self.folder / name
            try:
                metrics = build(runs, out, replace=True)
            except TransferError as error:
                print(f"transfer: no ensemble of {name}: {error}", file=sys.stderr)
                continue
            print_summary(metrics, out)
