"""`transfer analyze RUN`: how far apart the source and target features are, before and after the run's training.

Proxy A-distance (Ben-David et al. 2007; Ganin et al. 2016), with one fixed convention:
- features: the pooled features of the run's source-validation split and target test split (the same splits as the
  run, rebuilt from its config), at most `--max-examples` of each, the same number from both domains;
- a linear classifier (standardised features, logistic regression) learns source vs target on a stratified half and
  is scored on the other half: test error ε;
- PAD = 2 (1 - 2ε), with ε replaced by 1 - ε when ε > 0.5. 0: indistinguishable domains; 2: perfectly separable.

"Before" is the pretrained backbone the run started from; "after" is the run's trained model, from its `model/`
folder (runs save it with `train.save_model=true`). A t-SNE plot of both goes beside them.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Dict, List

import numpy as np

from .console import print_table
from .distance import proxy_a_distance
from .errors import TransferError
from .outputs import read_json, write_json


def tsne_plot(features: Dict[str, np.ndarray], labels: np.ndarray, n_source: int, title: str, path: Path) -> None:
    from sklearn.manifold import TSNE

    from .plots import _pyplot

    plt = _pyplot()
    fig, axes = plt.subplots(1, len(features), figsize=(5.5 * len(features), 5))
    for ax, (stage, x) in zip(np.atleast_1d(axes), features.items()):
        points = TSNE(n_components=2, init="pca", perplexity=min(30, len(x) // 4), random_state=0).fit_transform(x)
        for domain, part, colour in (("source", slice(0, n_source), "tab:blue"), ("target", slice(n_source, None), "tab:orange")):
            for cls, marker in ((0, "o"), (1, "^")):
                chosen = points[part][labels[part] == cls]
                ax.scatter(chosen[:, 0], chosen[:, 1], s=8, c=colour, marker=marker, alpha=0.6, label=f"{domain}, class {cls}")
        ax.set_title(stage, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    np.atleast_1d(axes)[-1].legend(fontsize=7, loc="best")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def analyze(run: Path, max_examples: int, tsne: bool) -> Dict[str, float]:
    config_file, saved = run / ".hydra" / "config.yaml", run / "model" / "config.json"
    if not config_file.exists():  # checked before torch and transformers load (seconds)
        raise TransferError(f"{run} is not a run folder (no .hydra/config.yaml)")
    if not saved.exists():
        raise TransferError(f"{run} has no saved model; rerun it with train.save_model=true to analyze it")
    from omegaconf import OmegaConf

    from .config import RunConfig
    from .data import build_data
    from .data.batching import TokenizedSet
    from .hardware import setup
    from .models import build_model, load_backbone_config, load_tokenizer
    from .models.exported import TransferForSequenceClassification
    from .evaluate import infer

    cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(RunConfig), OmegaConf.load(config_file)))
    accelerator = setup(cfg.hardware, cfg.seed).accelerator
    tokenizer = load_tokenizer(cfg.model)
    data = build_data(cfg, tokenizer, Path(cfg.paths.data_dir).expanduser(), Path(cfg.paths.cache_dir).expanduser())
    backbone_config = load_backbone_config(cfg.model)
    before = build_model(cfg.model, data.num_labels, len(tokenizer), backbone_config)
    after = TransferForSequenceClassification.from_pretrained(saved.parent)

    rng = np.random.default_rng(cfg.seed)
    picks = {name: rng.permutation(len(split))[:max_examples] for name, split in (("source", data.source_val), ("target", data.target_test))}
    splits = {"source": data.source_val, "target": data.target_test}
    subsets = {name: TokenizedSet([split.ids[i] for i in picks[name]], split.labels[picks[name]]) for name, split in splits.items()}

    result, features = {}, {}
    for stage, model in (("before", before), ("after", after)):
        model.to(accelerator.device).eval()
        encoded = {name: infer(model.encode, subset, cfg.train.eval_batch_size, tokenizer.pad_token_id, accelerator).numpy()
                   for name, subset in subsets.items()}
        result[f"pad_{stage}"] = proxy_a_distance(encoded["source"], encoded["target"], cfg.seed)
        features[f"{stage} training: PAD {result[f'pad_{stage}']:.3f}"] = np.vstack([encoded["source"], encoded["target"]])
    labels = np.concatenate([subsets["source"].labels, subsets["target"].labels])
    metrics = read_json(run / "metrics.json") or {}
    summary = {
        **result, "pad_change": result["pad_after"] - result["pad_before"],
        "source_examples": len(subsets["source"]), "target_examples": len(subsets["target"]),
        "strategy": metrics.get("strategy"), "source": metrics.get("source"), "target": metrics.get("target"),
        "convention": "PAD = 2(1 - 2e), e = test error of a logistic regression on standardised pooled features, "
                      "stratified 50/50 split, e -> 1 - e when e > 0.5",
    }
    write_json(run / "analysis.json", summary)
    if tsne:
        title = f"{summary['strategy']}: {summary['source']} -> {summary['target']} (blue source, orange target)"
        tsne_plot(features, labels, len(subsets["source"]), title, run / "analysis_tsne.png")
    return summary


def main(argv: List[str]) -> None:
    parser = argparse.ArgumentParser(prog="transfer analyze", description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders saved with train.save_model=true")
    parser.add_argument("--max-examples", type=int, default=1000, help="per domain (default: %(default)s)")
    parser.add_argument("--no-tsne", action="store_true", help="skip the t-SNE plot")
    args = parser.parse_args(argv)
    if args.max_examples < 10:
        raise TransferError(f"--max-examples={args.max_examples} must be >= 10")

    from rich.table import Table

    table = Table(title="proxy A-distance between source and target features (0 = aligned, 2 = separable)")
    for column in ("run", "strategy", "pair", "PAD before", "PAD after", "change"):
        table.add_column(column, justify="right" if column.startswith(("PAD", "change")) else "left")
    for run in args.runs:
        s = analyze(run, args.max_examples, not args.no_tsne)
        table.add_row(str(run), str(s["strategy"]), f"{s['source']}→{s['target']}", f"{s['pad_before']:.3f}",
                      f"{s['pad_after']:.3f}", f"{s['pad_change']:+.3f}")
    print_table(table)
