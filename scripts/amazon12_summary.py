"""The README's Amazon-12 summary, from the tables `transfer report` writes: one row per pair (mean ± std over seeds,
target test accuracy), the 12-pair average, the pairs flagged as negative transfer, and each strategy's label-free
selection gap (source-validation pick minus the oracle pick, averaged over runs), and, for scale, the published
12-pair average of each method's family with other backbones. ↓ marks negative transfer beyond one standard error.

The in-domain column is the classic yardstick of Blitzer et al. (2007): a model trained on the target domain's own
labels. Here it is source_only's source-validation accuracy on runs whose source is the pair's target (the same
1600 training reviews, 400 held out; the epoch that source_val picked, so a little optimistic). In-domain minus
source_only is the transfer loss that adaptation can close; the table says how much of it each method closes.

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
# Published 12-pair averages of the same method family, with other backbones and protocols, for scale.
PUBLISHED = {
    "dann": "0.813 mSDA, 0.763 bag-of-words (Ganin et al., JMLR 2016)",
    "self_training": "0.784 asymmetric tri-training, bag-of-words (Saito et al., ICML 2017)",
}


def main(folder: Path) -> None:
    report = pd.read_csv(folder / "report.csv")
    selection = pd.read_csv(folder / "selection.csv")
    runs = pd.read_csv(folder / "runs.csv")
    source_only = runs[(runs.strategy == "source_only") & (runs.status == "completed")]
    by_domain = source_only.groupby("source").source_val_accuracy.mean()
    strategies = [s for s in ORDER if s in set(report.label)] + sorted(set(report.label) - set(ORDER))
    pairs = sorted(set(report.pair))
    in_domain = pd.Series({pair: by_domain[pair.split("→")[1]] for pair in pairs})
    cell = {(r.label, r.pair): r for r in report.itertuples()}
    print("| pair | in-domain | " + " | ".join(strategies) + " |")
    print("| --- | --- |" + " --- |" * len(strategies))
    for pair in pairs:
        row = [f"{in_domain[pair]:.3f}"]
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
    baseline = finished[finished.label == "source_only"].set_index("pair")["mean"]
    averages, deltas, closed = [f"{in_domain.mean():.3f}"], [f"{(in_domain - baseline).mean():+.3f}"], ["100%"]
    flags, gaps = [""], [""]
    for s in strategies:
        done = finished[finished.label == s]
        suffix = "" if len(done) == len(pairs) else f" ({len(done)} pairs)"
        averages.append(f"{done['mean'].mean():.3f}{suffix}" if len(done) else "")
        deltas.append(f"{done.delta_vs_source_only.mean():+.3f}{suffix}" if len(done) else "")
        loss = (in_domain - baseline)[done.pair].mean()
        closed.append(f"{done.delta_vs_source_only.mean() / loss:.0%}{suffix}" if len(done) else "")
        negative = done[done.negative_transfer & (s != "source_only")]
        flags.append(f"{len(negative)} ({(~negative.within_noise).sum()} beyond 1 s.e.)" if s != "source_only" else "")
        picks = selection[selection.label == s]
        gaps.append(f"{(picks.source_val - picks.oracle_pick).mean():+.3f}" if len(picks) else "")
    print("| **average** | " + " | ".join(averages) + " |")
    print("| Δ source_only (same pairs) | " + " | ".join(deltas) + " |")
    print("| transfer loss closed | " + " | ".join(closed) + " |")
    print("| below source_only | " + " | ".join(flags) + " |")
    print("| selection gap (source_val) | " + " | ".join(gaps) + " |")
    print("| published, other backbones | | " + " | ".join(PUBLISHED.get(s, "") for s in strategies) + " |")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "results/amazon12"))
