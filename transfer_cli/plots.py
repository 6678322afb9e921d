"""The report's figures (matplotlib, PNG): a strategy × pair heatmap and learning curves from the history files."""

from __future__ import annotations

from pathlib import Path
from typing import List

import pandas as pd


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    return plt


def heatmap(table: pd.DataFrame, metric: str, path: Path) -> None:
    """Mean score per strategy (rows) and pair (columns), annotated; the average column last."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(1.2 * len(table.columns) + 3, 0.45 * len(table) + 1.5))
    image = ax.imshow(table.values.astype(float), cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(table.columns)), table.columns, rotation=30, ha="right")
    ax.set_yticks(range(len(table)), table.index)
    for (i, j), value in pd.DataFrame(table.values).stack().items():
        ax.text(j, i, f"{value:.3f}", ha="center", va="center", color="white" if value < table.values.mean() else "black", fontsize=8)
    fig.colorbar(image, ax=ax, label=metric)
    ax.set_title(f"{metric}: strategy × pair")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def learning_curves(runs: pd.DataFrame, path: Path) -> None:
    """Per pair: source-validation (solid) and target-test (dashed) accuracy over epochs, one colour per strategy,
    averaged over seeds. Target-test curves are for analysis; no selection used them."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    pairs: List[str] = sorted(runs["pair"].unique())
    fig, axes = plt.subplots(1, len(pairs), figsize=(6 * len(pairs), 4.2), squeeze=False)
    strategies = sorted(runs["label"].unique())
    palette = "tab10" if len(strategies) <= 10 else "tab20"  # tab20 pairs similar shades: only when needed
    colours = plt.get_cmap(palette)
    for ax, pair in zip(axes[0], pairs):
        for k, label in enumerate(strategies):
            histories = []
            for folder in runs[(runs.pair == pair) & (runs.label == label)]["folder"]:
                file = Path(folder) / "history.csv"
                if file.exists():
                    h = pd.read_csv(file)
                    histories.append(h.assign(step=range(1, len(h) + 1)))
            if not histories:
                continue
            mean = pd.concat(histories).groupby("step")[["source_val_accuracy", "target_test_accuracy"]].mean()
            colour = colours(k % colours.N)
            ax.plot(mean.index, mean["source_val_accuracy"], color=colour, label=label)
            ax.plot(mean.index, mean["target_test_accuracy"], color=colour, linestyle="--")
        ax.set_title(f"{pair}  (solid: source val, dashed: target test)", fontsize=9)
        ax.set_xlabel("epoch (all phases)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("accuracy")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
