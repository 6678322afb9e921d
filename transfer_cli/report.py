"""`transfer report PATH...`: aggregate run and multirun folders into one table.

Every folder with a `status.json` under the given paths is a run. Completed runs (with `metrics.json`) are grouped
by configuration (strategy, peft, model, source, target, protocol): mean ± std over seeds, deltas against
`source_only` and `target_oracle` of the same pair, model and protocol, and a negative-transfer flag (worse than
`source_only`). Failed, running and interrupted runs are listed apart, with their errors. The tables are printed,
and written as CSV and Markdown beside the runs, with two figures: a strategy × pair heatmap and learning curves.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import List, Optional, Tuple

import pandas as pd

from .errors import TransferError
from .outputs import write_atomic

CONFIG = ["strategy", "peft", "model", "source", "target", "protocol"]
BASELINE, ORACLE = "source_only", "target_oracle"


def _read_json(path: Path) -> Optional[dict]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def collect(paths: List[Path]) -> Tuple[pd.DataFrame, pd.DataFrame]:
    """(completed runs: one row of metrics each; other runs: folder, status, error, overrides)."""
    done, other = [], []
    for root in paths:
        if not root.exists():
            raise TransferError(f"no such folder: {root}")
        for status_file in sorted(root.rglob("status.json")):
            folder = status_file.parent
            status = _read_json(status_file) or {"status": "unreadable"}
            metrics = _read_json(folder / "metrics.json")
            if status.get("status") == "completed" and metrics:
                done.append({**metrics, "folder": str(folder), "finished": status.get("finished", "")})
            else:
                overrides = folder / ".hydra" / "overrides.yaml"
                other.append({
                    "folder": str(folder),
                    "status": status.get("status", "unknown") if status.get("status") != "running" else "running or interrupted",
                    "error": status.get("error", ""),
                    "overrides": " ".join(line[2:].strip() for line in overrides.read_text().splitlines()
                                          if line.startswith("- ")) if overrides.exists() else "",
                })
    runs = pd.DataFrame(done)
    if not runs.empty:
        runs["peft"] = runs["peft"].fillna("none") if "peft" in runs else "none"
        # a configuration run again with the same seed counts once: its latest run
        runs = runs.drop_duplicates("folder").sort_values(["finished", "folder"]).drop_duplicates([*CONFIG, "seed"], keep="last")
        runs["pair"] = runs["source"] + "→" + runs["target"]
    return runs, pd.DataFrame(other, columns=["folder", "status", "error", "overrides"])


def summarise(runs: pd.DataFrame, metric: str) -> pd.DataFrame:
    """One row per configuration: seeds, mean, std, the deltas and the negative-transfer flag."""
    if metric not in runs:
        raise TransferError(f"no run has the metric '{metric}'; try target_test_accuracy or target_test_f1_macro")
    grouped = runs.groupby(CONFIG, dropna=False)
    table = grouped[metric].agg(["count", "mean", "std"]).reset_index()
    table = table.rename(columns={"count": "seeds"})
    table["std"] = table["std"].fillna(0.0)
    table["oracle"] = grouped["oracle"].any().values
    reference = [c for c in CONFIG if c not in ("strategy", "peft")]
    for name, column in ((BASELINE, "delta_vs_source_only"), (ORACLE, "delta_vs_oracle")):
        base = table[(table.strategy == name) & (table.peft == "none")][[*reference, "mean"]]
        table = table.merge(base.rename(columns={"mean": f"{name}_mean"}), on=reference, how="left")
        table[column] = table["mean"] - table[f"{name}_mean"]
        table = table.drop(columns=f"{name}_mean")
    table["negative_transfer"] = (table["delta_vs_source_only"] < 0) & ~table["oracle"]
    table["pair"] = table["source"] + "→" + table["target"]
    table["label"] = table.apply(_label, axis=1)
    return table.sort_values(["pair", "mean"], ascending=[True, False]).reset_index(drop=True)


def _label(row) -> str:
    name = row.strategy if row.peft == "none" else f"{row.strategy}+{row.peft}"
    return f"{name} (ORACLE)" if row.oracle else name


def pivot(summary: pd.DataFrame) -> pd.DataFrame:
    """Strategy × pair of mean scores, with the average over pairs."""
    table = summary.pivot_table(index="label", columns="pair", values="mean", aggfunc="mean")
    table["average"] = table.mean(axis=1)
    return table.sort_values("average", ascending=False)


def summary_rows(summary: pd.DataFrame) -> Tuple[List[str], List[List[str]]]:
    """Columns that vary (model and protocol only when they do), then the scores."""
    varying = [c for c in ("model", "protocol") if summary[c].nunique() > 1]
    header = ["strategy", "pair", *varying, "seeds", "mean ± std", "Δ source_only", "Δ oracle", "flag"]
    signed = lambda v: "" if pd.isna(v) else f"{v:+.3f}"  # noqa: E731
    rows = [[r.label, r.pair, *(str(r[c]) for c in varying), str(r.seeds), f"{r['mean']:.3f} ± {r['std']:.3f}",
             signed(r.delta_vs_source_only), signed(r.delta_vs_oracle),
             "negative transfer" if r.negative_transfer else ""] for _, r in summary.iterrows()]
    return header, rows


def constants(summary: pd.DataFrame) -> str:
    return ", ".join(f"{c} {summary[c].iloc[0]}" for c in ("model", "protocol") if summary[c].nunique() == 1)


def pivot_rows(table: pd.DataFrame) -> Tuple[List[str], List[List[str]]]:
    header = ["strategy", *table.columns]
    rows = [[index, *("" if pd.isna(v) else f"{v:.3f}" for v in row)] for index, row in table.iterrows()]
    return header, rows


def markdown(header: List[str], rows: List[List[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def main(argv: List[str]) -> None:
    parser = argparse.ArgumentParser(prog="transfer report", description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", type=Path, help="run or multirun folders (searched recursively)")
    parser.add_argument("--metric", default="target_test_accuracy", help="the score to aggregate (default: %(default)s)")
    parser.add_argument("--out", type=Path, help="where to write report.csv, runs.csv and report.md (default: the first path)")
    args = parser.parse_args(argv)

    runs, other = collect(args.paths)
    if runs.empty and other.empty:
        raise TransferError(f"no runs under {', '.join(map(str, args.paths))}; a run folder holds a status.json")
    out = args.out or args.paths[0]
    out.mkdir(parents=True, exist_ok=True)
    sections = []  # (title, header, rows)
    if not runs.empty:
        summary = summarise(runs, args.metric)
        sections += [(f"Summary (mean ± std over seeds; {constants(summary)})", *summary_rows(summary)),
                     (f"{args.metric}: strategy × pair", *pivot_rows(pivot(summary)))]
        write_atomic(out / "report.csv", summary.to_csv(index=False))
        write_atomic(out / "runs.csv", runs.to_csv(index=False))
        from .plots import heatmap, learning_curves

        heatmap(pivot(summary), args.metric, out / "report_heatmap.png")
        runs = runs.merge(summary[[*CONFIG, "label"]], on=CONFIG, how="left")
        learning_curves(runs, out / "report_curves.png")
    if not other.empty:
        sections.append(("Failed or incomplete runs", ["folder", "status", "error", "overrides"], other.astype(str).values.tolist()))
    intro = f"# Transfer report\n\nMetric: `{args.metric}`; {len(runs)} completed runs, {len(other)} others.\n"
    write_atomic(out / "report.md", "\n".join([intro, *(f"## {t}\n\n{markdown(h, r)}" for t, h, r in sections)]))

    from rich.console import Console
    from rich.table import Table

    console = Console()
    for title, header, rows in sections:
        table = Table(title=title, title_justify="left")
        for i, column in enumerate(header):
            table.add_column(column, justify="left" if i < 2 else "right")
        for row in rows:
            table.add_row(*row, style="red" if row[-1] == "negative transfer" else None)
        console.print(table)
    console.print(f"report: {out / 'report.md'}")
