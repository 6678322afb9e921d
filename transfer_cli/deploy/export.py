"""`transfer export RUN --out DIR`: a run's adapted classifier as a standard Hugging Face model folder, with a model card.

The run must have saved its model (`train.save_model=true` writes RUN/model/, the same folder without the card). The
folder holds config.json (id2label from the target domain's labels), model.safetensors and the tokenizer; it loads
with `AutoModelForSequenceClassification.from_pretrained(DIR)` or `pipeline("text-classification", model=DIR)` once
`transfer_cli.hf` is imported (see transfer_cli/models/exported.py for why a class of our own).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path
from typing import List

from .. import __version__
from ..errors import TransferError
from ..outputs import read_json, write_atomic

CARD_METRICS = ["target_test_accuracy", "target_test_f1_macro", "source_val_accuracy", "selection", "selection_score",
                "oracle", "target_labels_used", "source_train_size", "target_pool_size", "target_test_size"]


def saved_model(run: Path) -> Path:
    """The run's saved model folder, or a clear error."""
    if not (run / ".hydra" / "config.yaml").exists():
        raise TransferError(f"{run} is not a run folder (no .hydra/config.yaml); give a folder under outputs/")
    folder = run / "model"
    if not (folder / "config.json").exists():
        raise TransferError(f"{run} has no saved model; run it again with train.save_model=true, then export it")
    return folder


def command(run: Path) -> str:
    overrides = run / ".hydra" / "overrides.yaml"
    lines = overrides.read_text().splitlines() if overrides.exists() else []
    return " ".join(["transfer run", *(line[2:].strip() for line in lines if line.startswith("- "))])


def model_card(run: Path) -> str:
    metrics = read_json(run / "metrics.json") or {}
    env = read_json(run / "env.json") or {}
    strategy, source, target = (metrics.get(k, "?") for k in ("strategy", "source", "target"))
    value = lambda v: f"{v:.4f}" if isinstance(v, float) else str(v)  # noqa: E731
    rows = "\n".join(f"| {key} | {value(metrics[key])} |" for key in CARD_METRICS if key in metrics)
    oracle = " It used target labels for training or selection (an oracle run)." if metrics.get("oracle") else ""
    return f"""---
library_name: transformers
pipeline_tag: text-classification
tags: [transfer-learning, domain-adaptation, {strategy}]
---

# {strategy}: {source} → {target}

A text classifier adapted from `{source}` to `{target}` with the `{strategy}` strategy of
[transfer](https://pypi.org/project/transfer-cli/) {metrics.get("transfer_version", __version__)}
(git {env.get("git_sha") or "unknown"}), protocol `{metrics.get("protocol", "?")}`, seed {metrics.get("seed", "?")}.{oracle}

    {command(run)}

| metric | value |
| --- | --- |
{rows}

`target_test_accuracy` is measured on held-out `{target}` examples whose labels no label-free run ever reads.

## Use

The model is the run's encoder, pooling and head, in the small class `TransferForSequenceClassification`; importing
`transfer_cli.hf` registers it with transformers (no `trust_remote_code`):

```python
import transfer_cli.hf
from transformers import pipeline
classify = pipeline("text-classification", model="path/to/this/folder")
```

or `transfer predict path/to/this/folder --input reviews.csv`.
"""


def export(run: Path, out: Path) -> Path:
    source = saved_model(run)
    if out.exists() and any(out.iterdir()):
        raise TransferError(f"{out} exists and is not empty; choose a new --out folder or remove it")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        for file in source.iterdir():
            shutil.copy2(file, staging / file.name)
        write_atomic(staging / "README.md", model_card(run))
        if out.exists():
            out.rmdir()
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def main(argv: List[str]) -> None:
    parser = argparse.ArgumentParser(prog="transfer export", description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a run folder saved with train.save_model=true")
    parser.add_argument("--out", type=Path, required=True, help="the folder to write (new or empty)")
    args = parser.parse_args(argv)
    print(f"exported: {export(args.run, args.out)}")
