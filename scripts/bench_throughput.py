"""Training and evaluation throughput of `transfer run` against the Hugging Face Trainer and a bare loop.

Four recipes train the same model on the same N source reviews (same max_length, batch size, epochs, seed) and
evaluate on the same target reviews:

    a  a real `transfer run strategy=source_only` (the CLI, in a subprocess)
    b  the HF Trainer's default recipe: fp32 (the Trainer's default), random batches, DataCollatorWithPadding
    c  the HF Trainer tuned: the runner's precision rule (bf16 only where native), length-grouped sampling
    d  a bare loop: forward, backward, step over length-sorted, dynamically padded batches (the compute limit),
       in the runner's precision

The table names the CPU capability and each recipe's precision: figures from CPUs of different kinds (native bf16
or not) do not compare.

Each recipe runs in its own process, so its peak memory is its own. Prints a table and the ratios a/b, a/c, a/d,
and writes everything as JSON.

    python scripts/bench_throughput.py --n 512 --domain books --target dvd
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RECIPES = {
    "a": "transfer run (source_only)",
    "b": "HF Trainer, default recipe",
    "c": "HF Trainer, tuned (precision rule, length-grouped)",
    "d": "bare loop (compute limit)",
}
REPO = Path(__file__).resolve().parents[1]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=512, help="training reviews")
    p.add_argument("--n-eval", type=int, default=500, help="target reviews to evaluate on")
    p.add_argument("--domain", default="books", help="source domain (Blitzer)")
    p.add_argument("--target", default="dvd", help="target domain")
    p.add_argument("--model", default="minilm", help="a model config name (configs/model)")
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--data-dir", default=os.environ.get("TRANSFER_DATA_DIR", str(REPO.parent / "shared" / "data")))
    p.add_argument("--only", default="abcd", help="which recipes to run, e.g. 'ad'")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="an extra override for recipe a, to measure what one setting contributes "
                        "(e.g. --only a --set hardware=cpu_fp32)")
    p.add_argument("--out", default="bench_throughput.json")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--child-out", help=argparse.SUPPRESS)
    return p.parse_args(argv)


# --- the shared data and model, exactly as `transfer run` builds them --------------------------------------------


def compose(args):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    from transfer_cli.config import CONFIG_DIR, register_schema_and_domains

    register_schema_and_domains([CONFIG_DIR])
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = hydra_compose("config", overrides=[f"{k}={v}" for k, v in overrides(args).items()])
    return OmegaConf.to_object(cfg)


def overrides(args):
    return {
        "strategy": "source_only", "model": args.model, "source": args.domain, "target": args.target,
        "data.max_length": args.max_length, "data.max_source_train": args.n, "data.max_source_val": args.n_eval,
        "data.max_target_test": args.n_eval, "train.epochs": args.epochs, "train.batch_size": args.batch_size,
        "train.lr": args.lr, "paths.data_dir": args.data_dir, "seed": 0,
    }


def load(args):
    from transfer_cli.data import build_data
    from transfer_cli.models import load_tokenizer

    cfg = compose(args)
    tokenizer = load_tokenizer(cfg.model)
    data = build_data(cfg, tokenizer, Path(cfg.paths.data_dir), Path(cfg.paths.cache_dir).expanduser())
    return cfg, tokenizer, data


# --- the recipes --------------------------------------------------------------------------------------------------


def run_trainer(args, tuned: bool) -> dict:
    import dataclasses

    import numpy as np
    import torch
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, DataCollatorWithPadding, Trainer, TrainingArguments

    from transfer_cli.hardware import resolve_device, resolve_precision
    from transfer_cli.models import resolve_path

    cfg, tokenizer, data = load(args)
    as_dataset = lambda s: Dataset.from_dict({"input_ids": [i.tolist() for i in s.ids], "labels": s.labels.tolist()})  # noqa: E731
    if cfg.model.random_init is not None:  # the tiny test model: same shape as the runner builds
        from transformers import BertConfig

        shape = BertConfig(**cfg.model.random_init, vocab_size=len(tokenizer), num_labels=2)
        model = AutoModelForSequenceClassification.from_config(shape)
    else:
        model = AutoModelForSequenceClassification.from_pretrained(resolve_path(cfg.model), num_labels=2)
    device = resolve_device("auto")
    options = dict(
        output_dir=tempfile.mkdtemp(), per_device_train_batch_size=args.batch_size, per_device_eval_batch_size=64,
        num_train_epochs=args.epochs, learning_rate=args.lr, seed=0, report_to=[], save_strategy="no",
        logging_strategy="no", use_cpu=device == "cpu",
    )
    precision = resolve_precision("auto", device) if tuned else "fp32"
    if tuned:
        options["bf16"] = precision == "bf16"
        options["fp16"] = precision == "fp16"
        fields = {f.name for f in dataclasses.fields(TrainingArguments)}
        if "train_sampling_strategy" in fields:  # transformers >= 5
            options["train_sampling_strategy"] = "group_by_length"
        else:
            options["group_by_length"] = True
    trainer = Trainer(model=model, args=TrainingArguments(**options), train_dataset=as_dataset(data.source_train),
                      data_collator=DataCollatorWithPadding(tokenizer))
    start = time.perf_counter()
    trained = trainer.train()
    train_seconds = time.perf_counter() - start
    start = time.perf_counter()
    predicted = trainer.predict(as_dataset(data.target_test))
    eval_seconds = time.perf_counter() - start
    accuracy = float((np.argmax(predicted.predictions, -1) == data.target_test.labels).mean())
    return {
        "train_samples_per_second": len(data.source_train) * args.epochs / train_seconds,
        "trainer_reported_train_samples_per_second": trained.metrics.get("train_samples_per_second"),
        "eval_samples_per_second": len(data.target_test) / eval_seconds,
        "target_test_accuracy": accuracy, "train_seconds": train_seconds, "eval_seconds": eval_seconds,
        "gpu_peak_bytes": torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None,
        "precision": precision,
    }


def run_bare_loop(args) -> dict:
    import torch
    import torch.nn.functional as F

    from transfer_cli.data.batching import eval_loader
    from transfer_cli.hardware import resolve_device, resolve_precision
    from transfer_cli.models import build_model

    cfg, tokenizer, data = load(args)
    torch.manual_seed(0)
    device = resolve_device("auto")
    precision = resolve_precision("auto", device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    model = build_model(cfg.model, 2, len(tokenizer)).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    # length-sorted, dynamically padded batches (the same collation as the runner's evaluation)
    batches = [{k: v.to(device) for k, v in b.items()} for b in eval_loader(data.source_train, args.batch_size, tokenizer.pad_token_id)]
    autocast = lambda: torch.autocast(device, dtype=dtype, enabled=dtype is not None)  # noqa: E731
    model.train()
    start = time.perf_counter()
    for _ in range(args.epochs):
        for batch in batches:
            with autocast():
                loss = F.cross_entropy(model(batch["input_ids"], batch["attention_mask"]).float(), batch["labels"])
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    if device == "cuda":
        torch.cuda.synchronize()
    train_seconds = time.perf_counter() - start
    model.eval()
    start, correct = time.perf_counter(), 0
    with torch.no_grad(), autocast():
        for batch in eval_loader(data.target_test, 64, tokenizer.pad_token_id):
            logits = model(batch["input_ids"].to(device), batch["attention_mask"].to(device))
            correct += int((logits.argmax(-1).cpu() == batch["labels"]).sum())
    eval_seconds = time.perf_counter() - start
    return {
        "train_samples_per_second": len(data.source_train) * args.epochs / train_seconds,
        "eval_samples_per_second": len(data.target_test) / eval_seconds,
        "target_test_accuracy": correct / len(data.target_test), "train_seconds": train_seconds,
        "eval_seconds": eval_seconds, "gpu_peak_bytes": torch.cuda.max_memory_allocated() if device == "cuda" else None,
        "padding_fraction": float(1 - sum(int(b["attention_mask"].sum()) for b in batches) / sum(b["attention_mask"].numel() for b in batches)),
        "precision": precision,
    }


# --- measurement: one process per recipe --------------------------------------------------------------------------


def measure(key: str, args) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        if key == "a":
            command = ["transfer", "run", *[f"{k}={v}" for k, v in overrides(args).items()], *args.set,
                       f"paths.output_dir={tmp}"]
        else:
            command = [sys.executable, __file__, "--child", key, "--child-out", f"{tmp}/result.json",
                       *[a for a in sys.argv[1:] if a not in ("--child",)]]
        start = time.perf_counter()
        with open(f"{tmp}/output.txt", "w") as log:
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
            _, status, usage = os.wait4(process.pid, 0)  # the child's own resource usage, peak memory included
            process.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - start
        if process.returncode:
            raise SystemExit(f"recipe {key} failed:\n{Path(tmp, 'output.txt').read_text()[-3000:]}")
        if key == "a":
            (metrics_file,) = Path(tmp).rglob("metrics.json")
            m = json.loads(metrics_file.read_text())
            result = {k: m[k] for k in ("train_samples_per_second", "eval_samples_per_second", "target_test_accuracy",
                                        "train_seconds", "eval_seconds", "device", "precision")}
        else:
            result = json.loads(Path(f"{tmp}/result.json").read_text())
    result["wall_seconds"] = wall
    result["peak_rss_mib"] = usage.ru_maxrss / 1024  # Linux reports KiB
    return result


def main(argv=None):
    args = parse_args(argv)
    if args.child:
        result = run_bare_loop(args) if args.child == "d" else run_trainer(args, tuned=args.child == "c")
        Path(args.child_out).write_text(json.dumps(result))
        return
    results = {}
    for key in args.only:
        print(f"running {key}: {RECIPES[key]} ...", flush=True)
        results[key] = measure(key, args)
    print_table(args, results)
    import torch

    settings = {**vars(args), "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    Path(args.out).write_text(json.dumps({"settings": settings, "results": results}, indent=2) + "\n")
    print(f"written: {args.out}")


def print_table(args, results):
    import torch
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{args.domain} -> {args.target}, N={args.n}, max_length={args.max_length}, "
                        f"batch {args.batch_size}, {args.epochs} epoch(s), {os.cpu_count()} cores, CPU capability "
                        f"{torch.backends.cpu.get_cpu_capability()}")
    for column in ("recipe", "precision", "train samples/s", "eval samples/s", "wall s", "peak RSS MiB", "target acc"):
        table.add_column(column, justify="left" if column == "recipe" else "right")
    for key, r in results.items():
        table.add_row(f"{key}  {RECIPES[key]}", r["precision"], f"{r['train_samples_per_second']:.1f}", f"{r['eval_samples_per_second']:.1f}",
                      f"{r['wall_seconds']:.1f}", f"{r['peak_rss_mib']:.0f}", f"{r['target_test_accuracy']:.3f}")
    console = Console(width=140)
    console.print(table)
    if "a" in results:
        for other in "bcd":
            if other in results:
                ratio = results["a"]["train_samples_per_second"] / results[other]["train_samples_per_second"]
                eval_ratio = results["a"]["eval_samples_per_second"] / results[other]["eval_samples_per_second"]
                console.print(f"a/{other}: train {ratio:.2f}x, eval {eval_ratio:.2f}x")


if __name__ == "__main__":
    main()
