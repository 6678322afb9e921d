"""The drift monitor's distance on real reviews: windows of in-domain traffic against windows of other domains.

The reference is what a saved model carries: the features of up to 1000 unlabelled texts of its target's pool. The
traffic windows (`--window` texts each, several draws) come from the target's held-out test split (in-domain: the
monitor must stay quiet) and from every other domain (shifted: it should alert). It prints the proxy A-distance per
source of traffic (mean, min, max over the draws), the default threshold's verdicts, and the margin on each side.

    python scripts/bench_drift.py RUN_OR_EXPORT --data-dir ../shared/data       # a saved run's own model and reference
    python scripts/bench_drift.py --pretrained minilm --target dvd               # MiniLM's pretrained features
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

DOMAINS = ["books", "dvd", "electronics", "kitchen", "movies"]


def domain_texts(name: str, data_dir: Path, seed: int):
    """(pool texts, test texts) of a domain, split as a run with this seed splits its target."""
    from types import SimpleNamespace

    from transfer_cli.config import CONFIG_DIR, DataConfig, DomainConfig, group_options, load_option
    from transfer_cli.data import _target_split
    from transfer_cli.data.loaders import load_domain

    ex = load_domain(load_option(group_options("domain", [CONFIG_DIR])[name], DomainConfig), data_dir)
    pool, test = _target_split(ex, SimpleNamespace(data=DataConfig(), protocol="inductive", seed=seed))
    return [ex.texts[i] for i in pool[:1000]], [ex.texts[i] for i in test]


def main() -> None:
    import torch

    from transfer_cli.deploy.drift import DEFAULT_THRESHOLD, load_reference
    from transfer_cli.deploy.runtime import Classifier
    from transfer_cli.distance import proxy_a_distance

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", type=Path, help="a saved run or exported folder with a drift reference")
    parser.add_argument("--pretrained", help="instead: this model group's pretrained features (e.g. minilm)")
    parser.add_argument("--target", default="dvd", help="the domain the reference comes from (the run's target)")
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    parser.add_argument("--window", type=int, default=500)
    parser.add_argument("--draws", type=int, default=5)
    parser.add_argument("--max-length", type=int, default=128)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-drift-"))
    if args.pretrained:
        from transfer_cli.models import build_model, load_tokenizer, model_config
        from transfer_cli.models.exported import save_pretrained

        model = build_model(model_config(args.pretrained), 2, 0).eval()
        save_pretrained(model, load_tokenizer(model_config(args.pretrained)), ["negative", "positive"], args.max_length, work)
        classifier, target = Classifier(work), args.target
        pool, _ = domain_texts(target, args.data_dir, 0)
        probabilities, features = classifier.predict(classifier.tokenize(pool), 32)
        reference = {"features": features, "probabilities": probabilities}
    else:
        classifier = Classifier(args.model)
        reference = load_reference(classifier.folder)
        if reference is None:
            raise SystemExit(f"{args.model} has no drift reference; save the run again with train.save_model=true")
        target = args.target
    print(f"reference: {len(reference['features'])} {target} pool texts; windows of {args.window}, {args.draws} draws; "
          f"CPU capability {torch.backends.cpu.get_cpu_capability()}; threshold {DEFAULT_THRESHOLD}")
    rng = np.random.default_rng(0)
    print(f"{'traffic':12} {'PAD mean':>8} {'min':>6} {'max':>6}  alerts")
    for domain in DOMAINS:
        _, test = domain_texts(domain, args.data_dir, 0)
        _, features = classifier.predict(classifier.tokenize(test), 32)
        pads = [proxy_a_distance(features[rng.permutation(len(features))[: args.window]], reference["features"], draw)
                for draw in range(args.draws)]
        name = f"{domain}{' (in)' if domain == target else ''}"
        print(f"{name:12} {np.mean(pads):8.3f} {min(pads):6.3f} {max(pads):6.3f}  "
              f"{sum(p > DEFAULT_THRESHOLD for p in pads)}/{len(pads)}")


if __name__ == "__main__":
    main()
