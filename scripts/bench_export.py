"""Compression, measured: a saved run exported as PyTorch fp32, ONNX fp32, ONNX int8, pruned, and pruned int8, side
by side, on the run's own target test split (real reviews).

For each export it prints the model file's size on disk, CPU latency p50/p95 at batch 1 (one text at a time, over
`--latency-texts` texts), throughput at batch 32 (texts/s over the whole test split, length-batched as `transfer
predict` does) and the target test accuracy, then each one's ratio to PyTorch fp32, measured in this session. Run it on
a quiet machine: other jobs on the cores skew the latencies.

    transfer run strategy=source_only source=books target=dvd data.max_length=128 train.save_model=true
    python scripts/bench_export.py outputs/2026-11-30/10-00-00_000000 --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def load_run_config(run: Path):
    from omegaconf import OmegaConf

    from transfer_cli.config import RunConfig

    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(RunConfig), OmegaConf.load(run / ".hydra" / "config.yaml")))


def measure(folder: Path, texts, labels, latency_texts: int) -> dict:
    from transfer_cli.deploy.runtime import ONNX_FILE, Classifier

    classifier = Classifier(folder)
    ids = classifier.tokenize(texts)
    classifier.predict(ids[:64], 32)  # warm-up
    latencies = []
    for one in ids[:latency_texts]:
        start = time.perf_counter()
        classifier.predict([one], 1)
        latencies.append(time.perf_counter() - start)
    start = time.perf_counter()
    probabilities, _ = classifier.predict(ids, 32)
    seconds = time.perf_counter() - start
    weights = folder / (ONNX_FILE if classifier.onnx else "model.safetensors")
    return {"size_mb": weights.stat().st_size / 1e6, "p50_ms": 1e3 * np.percentile(latencies, 50),
            "p95_ms": 1e3 * np.percentile(latencies, 95), "texts_per_s": len(ids) / seconds,
            "accuracy": float((probabilities.argmax(1) == labels).mean())}


def main() -> None:
    import torch

    from transfer_cli.data import target_test_texts
    from transfer_cli.deploy.export import export

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a run folder saved with train.save_model=true")
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    parser.add_argument("--latency-texts", type=int, default=200)
    parser.add_argument("--prune", type=float, default=0.3, help="the pruned variants' fraction (default: %(default)s)")
    args = parser.parse_args()

    texts, labels = target_test_texts(load_run_config(args.run), args.data_dir)
    print(f"{len(texts)} target test texts; CPU capability {torch.backends.cpu.get_cpu_capability()}, "
          f"{torch.get_num_threads()} threads")
    work = Path(tempfile.mkdtemp(prefix="bench-export-"))
    rows = {}
    try:
        variants = (("pytorch fp32", False, False, 0.0), ("onnx fp32", True, False, 0.0), ("onnx int8", True, True, 0.0),
                    (f"pruned {args.prune:.0%}", False, False, args.prune), ("int8+pruned", True, True, args.prune))
        for name, onnx, quantize, prune in variants:
            export(args.run, work / name.replace(" ", "-"), onnx, quantize, prune)
            rows[name] = measure(work / name.replace(" ", "-"), texts, labels, args.latency_texts)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    base = rows["pytorch fp32"]
    print(f"{'export':14} {'size MB':>8} {'p50 ms':>7} {'p95 ms':>7} {'texts/s':>8} {'accuracy':>8} | "
          f"{'size':>5} {'speed':>6} {'Δ acc':>6}")
    for name, r in rows.items():
        print(f"{name:14} {r['size_mb']:8.1f} {r['p50_ms']:7.1f} {r['p95_ms']:7.1f} {r['texts_per_s']:8.1f} "
              f"{r['accuracy']:8.4f} | {r['size_mb'] / base['size_mb']:4.2f}x {r['texts_per_s'] / base['texts_per_s']:5.2f}x "
              f"{r['accuracy'] - base['accuracy']:+6.3f}")


if __name__ == "__main__":
    main()
