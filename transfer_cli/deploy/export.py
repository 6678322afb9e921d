"""`transfer export RUN --out DIR`: a run's adapted classifier as a standard Hugging Face model folder, with a model card.

The run must have saved its model (`train.save_model=true` writes RUN/model/, the same folder without the card). The
folder holds config.json (id2label from the target domain's labels), model.safetensors and the tokenizer; it loads
with `AutoModelForSequenceClassification.from_pretrained(DIR)` or `pipeline("text-classification", model=DIR)` once
`transfer_cli.hf` is imported (see transfer_cli/models/exported.py for why a class of our own).

An ensemble's folder (`transfer ensemble`, every member saved with train.save_model=true) exports as `members/N/` (each
member's model folder, converted as the options say), `ensemble.json` (the member folders; their class probabilities
are averaged) and a drift reference; `transfer predict` and `transfer serve` load it as one model.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import shutil
from pathlib import Path
import warnings
from typing import List

from .. import __version__
from ..errors import TransferError
from ..outputs import (ADAPTER_DIR, ENSEMBLE_FILE, HEAD_FILE, MEMBERS, REFERENCE_FILE, read_json, staged_folder,
                       write_atomic, write_json)

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
    members = read_json(run / MEMBERS)
    if members:  # an ensemble's folder
        return " ".join(["transfer ensemble", *(m["folder"] for m in members["members"]), "--out", str(run)])
    overrides = run / ".hydra" / "overrides.yaml"
    lines = overrides.read_text().splitlines() if overrides.exists() else []
    return " ".join(["transfer run", *(line[2:].strip() for line in lines if line.startswith("- "))])


def model_card(run: Path, compression: str = "") -> str:
    metrics = read_json(run / "metrics.json") or {}
    env = read_json(run / "env.json") or {}
    strategy, source, target = (metrics.get(k, "?") for k in ("strategy", "source", "target"))
    value = lambda v: f"{v:.4f}" if isinstance(v, float) else str(v)  # noqa: E731
    rows = "\n".join(f"| {key} | {value(metrics[key])} |" for key in CARD_METRICS if key in metrics)
    oracle = " It used target labels for training or selection (an oracle run)." if metrics.get("oracle") else ""
    use = USE_ONE
    if metrics.get("members"):
        oracle += (f"\n\nAn ensemble: the mean of the class probabilities of {len(metrics['members'])} models (`members/N/`, "
                   f"each a model folder of its own), whose mean target_test_accuracy is "
                   f"{metrics['members_mean_accuracy']:.4f}.")
        use = USE_ENSEMBLE
    return f"""---
library_name: transformers
pipeline_tag: text-classification
tags: [transfer-learning, domain-adaptation, {strategy}]
---

# {strategy}: {source} → {target}

A text classifier adapted from `{source}` to `{target}` with the `{strategy}` strategy of
[transfer](https://pypi.org/project/transfer-cli/) {metrics.get("transfer_version", __version__)}
(git {env.get("git_sha") or "unknown"}), protocol `{metrics.get("protocol", "?")}`, seed {metrics.get("seed", "?")}.{oracle}
{compression}
    {command(run)}

| metric | value |
| --- | --- |
{rows}

`target_test_accuracy` is measured on held-out `{target}` examples whose labels no label-free run ever reads.

## Use

{use}"""


USE_ONE = """The model is the run's encoder, pooling and head, in the small class `TransferForSequenceClassification`; importing
`transfer_cli.hf` registers it with transformers (no `trust_remote_code`):

```python
import transfer_cli.hf
from transformers import pipeline
classify = pipeline("text-classification", model="path/to/this/folder")
```

or `transfer predict path/to/this/folder --input reviews.csv`.
"""

USE_ENSEMBLE = """`transfer predict path/to/this/folder --input reviews.csv` or `transfer serve path/to/this/folder`; in Python:

```python
from transfer_cli.deploy.runtime import Classifier
model = Classifier("path/to/this/folder")
probabilities, _ = model.predict(model.tokenize(["a gripping film"]), batch_size=32)
```

Each member (`members/0/`, ...) is a Hugging Face model folder of its own: `import transfer_cli.hf`, then
`AutoModelForSequenceClassification.from_pretrained("path/to/this/folder/members/0")`.
"""


# Texts of many lengths, to trace the ONNX graph and to check it against PyTorch.
SAMPLE = ["Great.", "Terrible product, it broke after two days and support never answered.",
          "The plot drags in the middle, but the last hour is wonderful and the actors are superb throughout.",
          "Not what I expected", "I have read this book three times now; each time I find something new in it, "
          "and I recommend it to anyone who likes slow, careful novels about families and the places they live in."]


def prune_ffn(folder: Path, fraction: float) -> int:
    """Structured pruning, in place: drop `fraction` of the feed-forward neurons of every transformer layer, those
    with the smallest ||w_in|| · ||w_out|| (the weights into and out of the neuron), and save the smaller model. The
    same count per layer, so that the config's intermediate size describes it. (Attention heads stay: transformers
    5 dropped prune_heads, and a config holds one head count for all layers.) Returns the neurons kept per layer."""
    import torch
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    from .. import hf  # noqa: F401 (registers the exported class)

    hf_logging.disable_progress_bar()
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    encoder = model.backbone.config
    key = next((k for k in ("intermediate_size", "hidden_dim", "ffn_dim") if isinstance(getattr(encoder, k, None), int)), None)
    if key is None:
        raise TransferError(f"cannot prune a {encoder.model_type} backbone: its config names no feed-forward width")
    width = getattr(encoder, key)
    keep = max(1, round(width * (1 - fraction)))
    linears = [m for m in model.backbone.modules() if isinstance(m, torch.nn.Linear)]
    into = [m for m in linears if m.out_features == width]
    out_of = [m for m in linears if m.in_features == width]
    if not into or len(into) != len(out_of):
        raise TransferError(f"cannot find the feed-forward layers of this {encoder.model_type} backbone to prune")
    with torch.no_grad():
        for a, b in zip(into, out_of):
            score = a.weight.norm(dim=1) * b.weight.norm(dim=0)
            kept = score.topk(keep).indices.sort().values
            a.weight = torch.nn.Parameter(a.weight[kept].clone())
            a.bias = torch.nn.Parameter(a.bias[kept].clone()) if a.bias is not None else None
            b.weight = torch.nn.Parameter(b.weight[:, kept].clone())
            a.out_features = b.in_features = keep
    setattr(encoder, key, keep)
    model.config.encoder = encoder.to_diff_dict()
    model.save_pretrained(folder)
    return keep


def to_onnx(folder: Path, quantize: bool) -> dict:
    """Replace the folder's safetensors weights by model.onnx (outputs: logits and the pooled features; dynamic batch
    and length), int8 with onnxruntime's dynamic quantisation (per channel) of every MatMul's weights when `quantize`.
    Returns the check against PyTorch on SAMPLE: the largest probability difference and the label agreement.

    The graph comes from torch's TorchScript exporter with eager attention: on books → dvd (AVX512) its int8 ran
    2.07x PyTorch fp32 at batch 32, against 1.73x for the dynamo exporter's graph and 1.25x with SDPA attention
    (docs/results.md, Compression)."""
    import numpy as np
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from .. import hf  # noqa: F401 (registers the exported class)
    from .runtime import ONNX_FILE, Classifier

    hf_logging.disable_progress_bar()
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    model.backbone.set_attn_implementation("eager")  # plain MatMul/Softmax nodes, which int8 quantises and runs fast
    tokenizer = AutoTokenizer.from_pretrained(folder)

    class Graph(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask):
            features = self.model.encode(input_ids, attention_mask)
            return self.model.head(features), features

    sample = tokenizer(SAMPLE, truncation=True, padding=True, return_tensors="pt")
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    fp32 = folder / ("model.fp32.onnx" if quantize else ONNX_FILE)
    with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):  # the exporter's chatter
        warnings.simplefilter("ignore")
        expected = model(sample["input_ids"], sample["attention_mask"]).logits.softmax(-1).numpy()
        torch.onnx.export(Graph(), (sample["input_ids"], sample["attention_mask"]), str(fp32), dynamo=False,
                          input_names=["input_ids", "attention_mask"], output_names=["logits", "features"],
                          dynamic_axes={name: {0: "batch", 1: "length"} for name in ("input_ids", "attention_mask")})
    if quantize:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        root = logging.getLogger()  # onnxruntime suggests pre-processing on the root logger, every time
        level, _ = root.level, root.setLevel(logging.ERROR)
        try:
            # per output channel: one scale per row keeps accuracy (per tensor lost 1.6 points on books → dvd)
            quantize_dynamic(str(fp32), str(folder / ONNX_FILE), weight_type=QuantType.QInt8, per_channel=True)
        finally:
            root.setLevel(level)
        fp32.unlink()
    (folder / "model.safetensors").unlink()
    got, _ = Classifier(folder)(sample["input_ids"].numpy(), sample["attention_mask"].numpy())
    return {"max_probability_difference": float(np.abs(got - expected).max()),
            "label_agreement": float((got.argmax(1) == expected.argmax(1)).mean())}


def base_name(folder: Path) -> str:
    return (read_json(folder / "config.json").get("adapter_base") or {}).get("name_or_path") or "?"


def keep_adapter_separate(folder: Path) -> None:
    """Turn a saved PEFT run's folder into an adapter export: adapter/ (PEFT's format) and the head's weights, no
    encoder weights; loading it (TransferForSequenceClassification.from_pretrained) fetches the base model."""
    from safetensors.torch import save_file
    from transformers.utils import logging as hf_logging

    from ..models.exported import TransferForSequenceClassification

    if not (folder / ADAPTER_DIR).exists():
        raise TransferError("--adapters: this run trained no PEFT adapters (peft=none); export it without --adapters")
    hf_logging.disable_progress_bar()
    model = TransferForSequenceClassification.from_pretrained(folder)
    if not getattr(model.config, "adapter_base", None):
        raise TransferError("--adapters: this run's base weights cannot be loaded again (a random-weight model, or "
                            "init_from); export it without --adapters, with the adapters merged")
    save_file({k: v.contiguous() for k, v in model.head.state_dict().items()}, str(folder / HEAD_FILE))
    (folder / "model.safetensors").unlink()


def export(run: Path, out: Path, onnx: bool = False, quantize: bool = False, prune: float = 0.0,
           adapters: bool = False) -> dict:
    """Write the export into `out` (new or empty), whole or not at all. Returns the ONNX check, if any (an ensemble:
    its first member's). An ensemble's folder exports each member's model into `members/N/` (each converted as the
    options say) and `ensemble.json`, which `transfer predict` and `serve` load as one model."""
    members = ensemble_models(run) if (run / MEMBERS).exists() else None
    source = saved_model(run) if members is None else None
    if out.exists() and any(out.iterdir()):
        raise TransferError(f"{out} exists and is not empty; choose a new --out folder or remove it")
    if adapters and (onnx or quantize or prune):
        raise TransferError("--adapters keeps the PEFT adapter apart from the base model; it cannot be combined with "
                            "--format onnx, --quantize or --prune (which need the merged weights)")
    with staged_folder(out) as staging:
        folders = [staging] if members is None else [staging / "members" / str(i) for i in range(len(members))]
        for folder, model in zip(folders, members or [source]):
            shutil.copytree(model, folder, dirs_exist_ok=True)
            if not adapters:
                shutil.rmtree(folder / ADAPTER_DIR, ignore_errors=True)
        done = ["the PEFT adapter kept apart from the base model (`adapter/`, PEFT's format, and the head in "
                f"`{HEAD_FILE}`; loading the folder loads the base `{base_name(folders[0])}` and merges them)"] * adapters
        done += [f"{prune:.0%} of the feed-forward neurons pruned"] * bool(prune)
        done += ["weights quantised to int8 (ONNX)" if quantize else "exported to ONNX"] * (onnx or quantize)
        compression = f"\nAfter the run: {'; '.join(done)}. The metrics below are the run's, before that.\n" if done else ""
        write_atomic(staging / "README.md", model_card(run, compression))
        if members is not None:
            write_json(staging / ENSEMBLE_FILE, {"members": [str(f.relative_to(staging)) for f in folders],
                                                 "combine": "mean of the members' class probabilities"})
            ensemble_reference(folders, staging)
        checks = []
        for folder in folders:
            if adapters:
                keep_adapter_separate(folder)
            if prune:
                prune_ffn(folder, prune)
            checks.append(to_onnx(folder, quantize) if onnx or quantize else {})
    return checks[0]


def ensemble_models(run: Path) -> List[Path]:
    """The saved model folders of an ensemble's members, or a clear error."""
    members = [Path(m["folder"]) for m in (read_json(run / MEMBERS) or {}).get("members", [])]
    for member in members:
        if not (member / "model" / "config.json").exists():
            raise TransferError(f"member {member} of the ensemble {run} has no saved model; an ensemble exports when "
                                "every member ran with train.save_model=true")
    return [member / "model" for member in members]


def ensemble_reference(folders: List[Path], staging: Path) -> None:
    """The served ensemble's drift reference: the first member's features (the ensemble serves them) and the mean of
    the members' class probabilities (on the same target texts when the members share their splits; else the first
    member's own)."""
    from safetensors.numpy import save_file

    from .drift import load_reference

    references = [load_reference(folder) for folder in folders]
    if references[0] is None:
        return
    reference = dict(references[0])
    shapes = {None if r is None else r["probabilities"].shape for r in references}
    if len(shapes) == 1:
        reference["probabilities"] = sum(r["probabilities"] for r in references) / len(references)
    save_file(reference, str(staging / REFERENCE_FILE))


def main(argv: List[str]) -> None:
    parser = argparse.ArgumentParser(prog="transfer export", description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a run folder saved with train.save_model=true, or an ensemble's "
                                               "folder whose members were")
    parser.add_argument("--out", type=Path, required=True, help="the folder to write (new or empty)")
    parser.add_argument("--format", choices=["pytorch", "onnx"], default="pytorch",
                        help="safetensors for PyTorch/transformers, or model.onnx for onnxruntime (default: %(default)s)")
    parser.add_argument("--quantize", choices=["int8"], help="dynamic int8 weights (onnxruntime's quantiser; implies onnx)")
    parser.add_argument("--prune", type=float, default=0.0, metavar="FRACTION",
                        help="drop this fraction of every layer's feed-forward neurons, the weakest by weight norm")
    parser.add_argument("--adapters", action="store_true",
                        help="a PEFT run: keep its adapter apart (adapter/, PEFT's format) instead of merging it; the "
                             "folder then holds no encoder weights, and loads the base model from its hub id or package")
    args = parser.parse_args(argv)
    if not 0 <= args.prune < 1:
        raise TransferError(f"--prune={args.prune} must be in [0, 1), the fraction of feed-forward neurons to drop")
    to_onnx_format = args.format == "onnx" or args.quantize == "int8"
    if to_onnx_format:
        try:
            import onnx  # noqa: F401
            import onnxruntime  # noqa: F401
        except ImportError:
            raise TransferError('ONNX export needs the onnx extra: pip install ".[onnx]" in the transfer checkout') from None
    check = export(args.run, args.out, to_onnx_format, args.quantize == "int8", args.prune, args.adapters)
    detail = (f" (onnxruntime against PyTorch: labels agree on {check['label_agreement']:.0%} of {len(SAMPLE)} texts, "
              f"probabilities within {check['max_probability_difference']:.1e})") if check else ""
    print(f"exported: {args.out}{detail}")
