"""`transfer report PATH...`: aggregate run and multirun folders into one table.

Every folder with a `status.json` under the given paths is a run. Completed runs (with `metrics.json`) are grouped
by configuration (strategy, peft, model, source, target, protocol, and the variant: the run's other overrides, such as
`strategy.k=8`, less those every run shares): mean ± std over seeds, deltas against
`source_only` and `target_oracle` of the same pair, model and protocol, and a negative-transfer flag (worse than
`source_only`; "within 1 s.e." where the shortfall is no larger than the standard error of the difference over
seeds). The selection table compares the label-free validators: the target test accuracy of the epoch each
one picks, against the oracle pick (the epoch best on the target test set). Failed, running and interrupted runs are
listed apart, with their errors; skipped sweep jobs (source = target) are counted. The tables are printed, and
written as CSV and Markdown beside the runs, with two figures: a strategy × pair heatmap and learning curves.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import List, Tuple

import pandas as pd

from .console import print_table
from .errors import TransferError
from .outputs import process_gone, read_json, read_overrides, write_atomic

CONFIG = ["strategy", "peft", "model", "source", "target", "protocol", "variant"]
# override keys that name what CONFIG already holds, or that do not change what a run computes
NOT_A_VARIANT = {"strategy", "peft", "model", "source", "target", "protocol", "seed", "experiment", "hardware", "resume",
                 "logger", "train.keep_checkpoints"}
BASELINE, ORACLE = "source_only", "target_oracle"
NEGATIVE, WITHIN_NOISE = "negative transfer", "negative transfer (within 1 s.e.)"  # the flags, red and yellow


def collect(paths: List[Path]) -> Tuple[pd.DataFrame, pd.DataFrame]:
    """(completed runs: one row of metrics each; other runs: folder, status, error, overrides)."""
    done, other = [], []
    for root in paths:
        if not root.exists():
            raise TransferError(f"no such folder: {root}")
        for status_file in sorted(root.rglob("status.json")):
            folder = status_file.parent
            status, metrics = read_json(status_file), read_json(folder / "metrics.json")
            if not isinstance(status, dict):  # a truncated or hand-edited file: reported, never a crash
                status = {"status": "corrupt", "error": "status.json is not a JSON object (corrupt?)"}
            elif status.get("status") == "completed" and not isinstance(metrics, dict):
                status = {"status": "corrupt", "error": "completed, but metrics.json is missing or not a JSON object"}
            if status.get("status") == "completed":
                done.append({**metrics, "folder": str(folder), "finished": status.get("finished", ""),
                             "overrides": read_overrides(folder)})
            else:
                other.append({
                    "folder": str(folder),
                    "status": _status(status),
                    "error": status.get("error", "") or _interruption(status),
                    "overrides": " ".join(read_overrides(folder)),
                })
    runs = pd.DataFrame(done)
    if not runs.empty:
        runs["peft"] = runs["peft"].fillna("none") if "peft" in runs else "none"
        shared = set.intersection(*(set(o) for o in runs.overrides))
        runs["variant"] = [" ".join(o for o in overrides if o not in shared and _variant_key(o))
                           for overrides in runs.overrides]
        # a configuration run again with the same seed counts once: its latest run
        runs = runs.drop_duplicates("folder").sort_values(["finished", "folder"]).drop_duplicates([*CONFIG, "seed"], keep="last")
        runs["pair"] = runs["source"] + "→" + runs["target"]
    return runs, pd.DataFrame(other, columns=["folder", "status", "error", "overrides"])


def _variant_key(override: str) -> bool:
    key = override.split("=", 1)[0].lstrip("+~")
    return key not in NOT_A_VARIANT and not key.startswith(("paths.", "hydra."))


def _status(status: dict) -> str:
    """running, or interrupted where the process is gone (killed with no chance to say so)."""
    if process_gone(status):
        return "interrupted"
    if status.get("status") == "running" and "pid" not in status:  # written before heartbeats existed
        return "running or interrupted"
    return status.get("status", "unknown")


def _interruption(status: dict) -> str:
    if status.get("status") == "interrupted" and status.get("signal"):
        return f"{status['signal']} after {status.get('epochs_completed', 0)} epochs; run it again to resume"
    if process_gone(status):
        return f"process {status.get('pid')} on {status.get('host')} is gone; run it again to resume"
    return ""


def summarise(runs: pd.DataFrame, metric: str) -> pd.DataFrame:
    """One row per configuration: seeds, mean, std, the deltas and the negative-transfer flag."""
    if metric not in runs:
        raise TransferError(f"no run has the metric '{metric}'; try target_test_accuracy or target_test_f1_macro")
    grouped = runs.groupby(CONFIG, dropna=False)
    table = grouped[metric].agg(["count", "mean", "std"]).reset_index()
    table = table.rename(columns={"count": "seeds"})
    table["std"] = table["std"].fillna(0.0)
    table["oracle"] = grouped["oracle"].any().values
    # a strategy's baselines ran on the same pair, model, protocol and settings; its own parameters may differ
    table["setting"] = [" ".join(o for o in v.split() if not o.lstrip("+~").startswith(("strategy.", "peft.")))
                        for v in table.variant]
    reference = ["model", "source", "target", "protocol", "setting"]
    for name, column in ((BASELINE, "delta_vs_source_only"), (ORACLE, "delta_vs_oracle")):
        base = table[(table.strategy == name) & (table.peft == "none")][[*reference, "mean", "std", "seeds"]]
        table = table.merge(base.add_prefix("base_").rename(columns={f"base_{c}": c for c in reference}),
                            on=reference, how="left")
        table[column] = table["mean"] - table["base_mean"]
        if name == BASELINE:  # the standard error of that difference, from the seeds of both (0 with one seed each)
            table["delta_se"] = (table["std"] ** 2 / table["seeds"] + table["base_std"] ** 2 / table["base_seeds"]) ** 0.5
        table = table.drop(columns=["base_mean", "base_std", "base_seeds"])
    table["negative_transfer"] = (table["delta_vs_source_only"] < 0) & ~table["oracle"]
    table["within_noise"] = table["negative_transfer"] & (-table["delta_vs_source_only"] <= table["delta_se"])
    table["pair"] = table["source"] + "→" + table["target"]
    table["label"] = table.apply(_label, axis=1)
    return table.sort_values(["pair", "mean"], ascending=[True, False]).reset_index(drop=True)


def _label(row) -> str:
    name = row.strategy if row.peft == "none" else f"{row.strategy}+{row.peft}"
    name = f"{name} {row.variant}" if row.variant else name
    return f"{name} (ORACLE)" if row.oracle else name


def selection_picks(runs: pd.DataFrame) -> pd.DataFrame:
    """Per run: among the epochs of its last phase, the target test accuracy at the epoch each validator picks, and
    at the oracle pick (the best target test accuracy: an analysis, never a selection)."""
    from .training.validators import VALIDATORS

    rows = []
    for _, run in runs.iterrows():
        file = Path(run.folder) / "history.csv"
        if not file.exists() or run.get("selection") == "none":  # nothing trained (zero-shot): nothing to select
            continue
        history = pd.read_csv(file)
        last = history[history.phase == history.phase.iloc[-1]].reset_index(drop=True)
        picks = {"epochs": len(last), "oracle_pick": last.target_test_accuracy.max()}
        for name, (column, sign) in VALIDATORS.items():
            if column in last and last[column].notna().all():
                picks[name] = last.target_test_accuracy[(sign * last[column]).idxmax()]
        rows.append({**{c: run[c] for c in [*CONFIG, "label", "pair", "seed"]}, **picks})
    return pd.DataFrame(rows)


def selection_rows(picks: pd.DataFrame) -> Tuple[List[str], List[List[str]]]:
    """Per configuration and over all: mean accuracy at each validator's pick, and its gap to the oracle pick."""
    from .training.validators import VALIDATORS

    names = [n for n in VALIDATORS if n in picks]
    gaps = picks.assign(**{f"{n}_gap": picks[n] - picks.oracle_pick for n in names})  # per run, then averaged
    columns = ["epochs", "oracle_pick", *names, *(f"{n}_gap" for n in names)]
    table = gaps.groupby(["label", "pair"])[columns].mean().reset_index()
    overall = gaps[columns].mean().to_frame().T.assign(label="all runs", pair="")
    header = ["strategy", "pair", "epochs", "oracle pick", *names]
    cell = lambda row, n: "" if pd.isna(row[n]) else f"{row[n]:.3f} ({row[f'{n}_gap']:+.3f})"  # noqa: E731
    rows = [[r.label, r.pair, f"{r.epochs:g}", f"{r.oracle_pick:.3f}", *(cell(r, n) for n in names)]
            for _, r in pd.concat([table, overall]).iterrows()]
    return header, rows


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
             _flag(r)] for _, r in summary.iterrows()]
    return header, rows


def _flag(row) -> str:
    if not row.negative_transfer:
        return ""
    return WITHIN_NOISE if row.within_noise else NEGATIVE


def constants(summary: pd.DataFrame) -> str:
    return ", ".join(f"{c} {summary[c].iloc[0]}" for c in ("model", "protocol") if summary[c].nunique() == 1)


def precisions(runs: pd.DataFrame) -> str:
    """The precision the runs trained in, and a warning where they differ: a sweep resumed on another machine, where
    hardware.precision=auto resolved otherwise (bf16 where it is native and faster), mixes them in one table."""
    known = runs["precision"].dropna() if "precision" in runs else pd.Series(dtype=str)
    if known.nunique() == 1:
        return f" Precision: {known.iloc[0]} in every run."
    if known.nunique() > 1:
        counts = ", ".join(f"{name} {n}" for name, n in known.value_counts().items())
        return (f" **The runs differ in precision** ({counts}): `runs.csv` says which run trained in which, and why; "
                "to compare like with like, pin hardware.precision.")
    return ""


def cpu_kinds(runs: pd.DataFrame) -> str:
    """The CPU capabilities the runs trained on (`torch.backends.cpu.get_cpu_capability()`), with their counts: one
    sweep shared out between machines trains on several, whose fp32 kernels agree to rounding, not to the bit."""
    known = runs["cpu_capability"].dropna() if "cpu_capability" in runs else pd.Series(dtype=str)
    if known.empty:
        return ""
    return f" CPU capability: {', '.join(f'{name} {n}' for name, n in known.value_counts().items())}."


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
    skipped, other = other[other.status == "skipped"], other[other.status != "skipped"]
    if runs.empty and other.empty:
        where = ", ".join(map(str, args.paths))
        if len(skipped):
            raise TransferError(f"only skipped jobs (source = target) under {where}; nothing to report")
        raise TransferError(f"no runs under {where}; a run folder holds a status.json")
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
        picks = selection_picks(runs)
        if not picks.empty:
            write_atomic(out / "selection.csv", picks.to_csv(index=False))
            sections.append(("Label-free model selection: target test accuracy at each validator's pick in the last "
                             "phase (gap to the oracle pick, the epoch best on the target test set)", *selection_rows(picks)))
    if not other.empty:
        sections.append(("Failed or incomplete runs", ["folder", "status", "error", "overrides"], other.astype(str).values.tolist()))
    intro = (f"# Transfer report\n\nMetric: `{args.metric}`; {len(runs)} completed runs, {len(other)} others"
             f"{f', {len(skipped)} skipped (source = target)' if len(skipped) else ''}.{precisions(runs)}{cpu_kinds(runs)}\n")
    write_atomic(out / "report.md", "\n".join([intro, *(f"## {t}\n\n{markdown(h, r)}" for t, h, r in sections)]))

    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console()
    console.print(intro.splitlines()[-1])
    for title, header, rows in sections:
        table = Table(title=title, title_justify="left")
        for i, column in enumerate(header):
            table.add_column(column, justify="left" if i < 2 else "right")
        for row in rows:  # (escaped: an override such as strategy.templates=[...] is not rich markup)
            table.add_row(*map(escape, row), style={NEGATIVE: "red", WITHIN_NOISE: "yellow"}.get(row[-1]))
        print_table(table, console)
    console.print(f"report: {out / 'report.md'}")
