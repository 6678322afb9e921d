"""What pairing source and target batches by length does to the batches a step compares (no training).

For each pair of domains, it draws one epoch of labelled source batches, as the loop does (length-grouped), and
beside each the unlabelled target batch, with `train.pair_by_length` true and false. It prints, per setting:
- r: the correlation between the mean lengths of the two batches of a step;
- gap: the mean |difference of those mean lengths|, in tokens, and as a fraction of the pool's length std;
- within-step length AUC: how well length alone tells the domains apart inside a step (0.5: not at all), averaged
  over the steps;
- coverage: the share of the target pool drawn at least once in the epoch, and the ratio of the most to the least
  drawn length bucket (pairing must not starve a bucket).
What pairing can remove is a step-level confound, seen by batch statistics (MMD, CORAL, BatchNorm) and by a
discriminator's per-batch loss; where the target reviews are longer at every quantile, a within-step difference
remains, and it is the domains' own.

    python scripts/bench_pairing.py --pairs books:dvd kitchen:movies --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
from types import SimpleNamespace

import numpy as np


def auc(negative: np.ndarray, positive: np.ndarray) -> float:
    """P(a random positive is longer than a random negative), ties half: how well length separates the two."""
    diff = positive[:, None] - negative[None, :]
    return float((diff > 0).mean() + 0.5 * (diff == 0).mean())


def measure(source, target, batch_size: int, paired: bool):
    import torch

    from transfer_cli.training import loop

    accelerator = SimpleNamespace(process_index=0, num_processes=1, device=torch.device("cpu"))
    ctx = SimpleNamespace(accelerator=accelerator, pad_id=0)
    stream = loop._Unlabelled(target, source, 0, batch_size, paired, ctx, None)
    pairs, aucs, seen = [], [], set()
    for batch in loop.train_loader(source, batch_size, 0, 0):
        partner = stream.beside(batch)
        seen.update(partner["index"].tolist())
        s, t = batch["attention_mask"].sum(1).numpy(), partner["attention_mask"].sum(1).numpy()
        pairs.append((s.mean(), t.mean()))
        aucs.append(auc(s, t))
    pairs = np.array(pairs)
    gap = np.abs(pairs[:, 0] - pairs[:, 1]).mean()
    per_bucket = np.array(stream.drawn) / np.array([len(b) for b in stream.buckets])
    coverage = len(seen) / len(target), per_bucket.max() / max(per_bucket.min(), 1e-9)
    return np.corrcoef(pairs.T)[0, 1], gap, gap / target.lengths.std(), float(np.mean(aucs)), coverage


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", nargs="+", default=["books:dvd", "kitchen:movies"], help="SOURCE:TARGET ...")
    p.add_argument("--data-dir", default="../shared/data")
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=16)
    args = p.parse_args(argv)

    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from transfer_cli.config import CONFIG_DIR, register_schema_and_domains
    from transfer_cli.data import build_data
    from transfer_cli.models import load_tokenizer

    register_schema_and_domains([CONFIG_DIR])
    print("| pair | pair_by_length | r (batch mean lengths) | gap (tokens) | gap / target std | within-step length AUC "
          "| pool drawn | most / least drawn bucket |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for pair in args.pairs:
        source, target = pair.split(":")
        with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
            cfg = OmegaConf.to_object(compose("config", overrides=[
                f"source={source}", f"target={target}", f"data.max_length={args.max_length}",
                f"paths.data_dir={args.data_dir}"]))
        tokenizer = load_tokenizer(cfg.model)
        data = build_data(cfg, tokenizer, cfg.paths.data_dir, cfg.paths.cache_dir)
        for paired in (False, True):
            r, gap, relative, step_auc, (drawn, spread) = measure(data.source_train, data.target_pool, args.batch_size,
                                                                  paired)
            print(f"| {source} → {target} | {str(paired).lower()} | {r:.2f} | {gap:.1f} | {relative:.2f} "
                  f"| {step_auc:.2f} | {drawn:.2f} | {spread:.1f} |")


if __name__ == "__main__":
    main()
