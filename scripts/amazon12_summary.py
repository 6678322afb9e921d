"""The README's Amazon-12 summary, from the tables `transfer report` writes: one row per pair (mean ± std over seeds,
target test accuracy), the 12-pair average, the pairs flagged as negative transfer, and each strategy's label-free
selection gap (source-validation pick minus the oracle pick, averaged over runs). ↓ marks negative transfer beyond
one standard error.

    transfer report results/amazon12/runs --out results/amazon12
    python scripts/amazon12_summary.py results/amazon12

A pair that a strategy has not finished (fewer than 3 seeds) shows its seed count; the average covers finished
pairs only and says how many."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

ORDER = ["source_only", "dann", "mmd", "self_training"]
SEEDS = 3


def main(folder: Path) -> None:
    report = pd.read_csv(folder / "report.csv")
    selection = pd.read_csv(folder / "selection.csv")
    strategies = [s for s in ORDER if s in set(report.label)] + sorted(set(report.label) - set(ORDER))
    pairs = sorted(set(report.pair))
    cell = {(r.label, r.pair): r for r in report.itertuples()}
    print("| pair | " + " | ".join(strategies) + " |")
    print("| --- |" + " --- |" * len(strategies))
    for pair in pairs:
        row = []
        for s in strategies:
            r = cell.get((s, pair))
            if r is None:
                row.append("")
                continue
            text = f"{r.mean:.3f} ± {r.std:.3f}" if r.seeds > 1 else f"{r.mean:.3f}"
            if r.seeds < SEEDS:
                text += f" ({r.seeds} seed{'s' * (r.seeds > 1)})"
            if r.negative_transfer and not r.within_noise:
                text = f"**{text}** ↓"
            row.append(text)
        print(f"| {pair} | " + " | ".join(row) + " |")
    finished = report[report.seeds >= SEEDS]
    averages, deltas, flags, gaps = [], [], [], []
    for s in strategies:
        done = finished[finished.label == s]
        suffix = "" if len(done) == len(pairs) else f" ({len(done)} pairs)"
        averages.append(f"{done['mean'].mean():.3f}{suffix}" if len(done) else "")
        deltas.append(f"{done.delta_vs_source_only.mean():+.3f}{suffix}" if len(done) else "")
        negative = done[done.negative_transfer & (s != "source_only")]
        flags.append(f"{len(negative)} ({(~negative.within_noise).sum()} beyond 1 s.e.)" if s != "source_only" else "")
        runs = selection[selection.label == s]
        gaps.append(f"{(runs.source_val - runs.oracle_pick).mean():+.3f}" if len(runs) else "")
    print("| **average** | " + " | ".join(averages) + " |")
    print("| Δ source_only (same pairs) | " + " | ".join(deltas) + " |")
    print("| below source_only | " + " | ".join(flags) + " |")
    print("| selection gap (source_val) | " + " | ".join(gaps) + " |")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "results/amazon12"))
