"""After the run: the saved/exported Hugging Face folder and `transfer predict`, on real reviews."""

from __future__ import annotations

import copy
import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from transfer_cli.data.loaders import load_domain
from transfer_cli.models.exported import save_pretrained
from transfer_cli.strategies import build_strategy

from .conftest import TINY_SHAPE, TRANSFER
from .test_errors import assert_clean_error


def reviews(data_dir, domain="dvd", n=40):
    from transfer_cli.config import DomainConfig, Loader

    ex = load_domain(DomainConfig(name=domain, loader=Loader.blitzer, path=f"amazon-multi-domain/{domain}"), data_dir)
    return ex.texts[:n], ex.labels[:n]


def decisive(model, batch):
    """The tiny random model, its last layer scaled up and centred on these texts, so that its predictions differ from
    text to text (in eval mode)."""
    last = [m for m in model.head.modules() if isinstance(m, torch.nn.Linear)][-1]
    model.eval()
    with torch.no_grad():
        last.weight.mul_(50)
        last.bias.sub_(model(batch["input_ids"], batch["attention_mask"]).mean(0))
    return model


@pytest.mark.parametrize("strategy", ["source_only", "dann", "feature_extraction"])
def test_exported_model_gives_the_run_models_logits(tiny_model, tokenizer, data_dir, tmp_path, strategy):
    """Linear, bottleneck (with BatchNorm statistics) and mlp heads: from_pretrained and pipeline load the folder, and
    its logits are the trained model's, in fp32, on real reviews."""
    import transfer_cli.hf  # noqa: F401
    from transformers import AutoModelForSequenceClassification, pipeline

    params = {"name": strategy, **({"head": "mlp"} if strategy == "feature_extraction" else {})}
    model = build_strategy(params, copy.deepcopy(tiny_model)).model
    texts, _ = reviews(data_dir)
    batch = tokenizer(texts, truncation=True, max_length=64, padding=True, return_tensors="pt")
    model.train()
    model(batch["input_ids"], batch["attention_mask"])  # moves BatchNorm's running statistics off their defaults
    decisive(model, batch)
    save_pretrained(model, tokenizer, ["negative", "positive"], 64, tmp_path / "model")

    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "model")
    assert type(loaded).__name__ == "TransferForSequenceClassification" and loaded.config.head == model.head.kind
    with torch.no_grad():
        expected = model(batch["input_ids"], batch["attention_mask"])
        got = loaded(**batch).logits
    assert torch.allclose(expected, got, atol=1e-5) and len(set(expected.argmax(-1).tolist())) == 2
    classify = pipeline("text-classification", model=str(tmp_path / "model"), truncation=True)
    labels = [r["label"] for r in classify(texts[:8])]
    assert labels == [["negative", "positive"][i] for i in expected[:8].argmax(-1).tolist()]
    assert not (tmp_path / "model" / "model.pt").exists() and (tmp_path / "model" / "model.safetensors").exists()


def test_lora_adapters_are_merged_into_the_exported_weights(tiny_model, tokenizer, data_dir, tmp_path):
    """A LoRA run exports as a plain model whose weights hold the adapters: the same logits, no PEFT needed to load."""
    import transfer_cli.hf  # noqa: F401
    from transformers import AutoModelForSequenceClassification

    from transfer_cli.config import PeftConfig, PeftMethod
    from transfer_cli.models import apply_peft

    model = copy.deepcopy(tiny_model)
    model.backbone = apply_peft(model.backbone, PeftConfig(name="lora", method=PeftMethod.lora, options={"r": 4}))
    with torch.no_grad():  # LoRA's B starts at zero: move it, or merging would change nothing
        for name, p in model.backbone.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    texts, _ = reviews(data_dir, n=20)
    batch = tokenizer(texts, truncation=True, max_length=64, padding=True, return_tensors="pt")
    model.eval()
    with torch.no_grad():
        expected = model(batch["input_ids"], batch["attention_mask"])
        plain = tiny_model.eval()(batch["input_ids"], batch["attention_mask"])
    save_pretrained(model, tokenizer, ["negative", "positive"], 64, tmp_path / "model")
    with torch.no_grad():
        got = AutoModelForSequenceClassification.from_pretrained(tmp_path / "model")(**batch).logits
    assert torch.allclose(got, expected, atol=1e-4) and not torch.allclose(got, plain, atol=1e-3)


def test_adapters_export_keeps_the_peft_adapter_apart(cli, tokenizer, data_dir, tmp_path):
    """`--adapters` on a real LoRA run: a folder with the adapter in PEFT's format and the head, no encoder weights,
    a fraction of the merged export's size; it loads (base + adapter + head) to the merged export's logits, which
    differ from the base's; predict reads it. A run without adapters is refused in one line."""
    import transfer_cli.hf  # noqa: F401
    from transformers import AutoModelForSequenceClassification, BertConfig, BertModel

    from .conftest import SMALL

    torch.manual_seed(0)  # a base model in a local folder, as a user's own checkpoint would be
    BertModel(BertConfig(**TINY_SHAPE, vocab_size=len(tokenizer))).save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    base = [f"model.name_or_path={tmp_path / 'base'}", "model.package=null", "model.random_init=null"]
    out = cli("run", "strategy=lora", "source=books", "target=dvd", "train.save_model=true", "train.lr=5e-3", *SMALL,
              *base, "hydra.run.dir=run")
    assert out.returncode == 0, out.stderr
    assert cli("export", "run", "--out", "merged").returncode == 0
    out = cli("export", "run", "--out", "apart", "--adapters")
    assert out.returncode == 0, out.stderr
    apart, merged = tmp_path / "apart", tmp_path / "merged"
    assert not (apart / "model.safetensors").exists() and not (merged / "adapter").exists()
    adapter_config = json.loads((apart / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["peft_type"] == "LORA" and adapter_config["base_model_name_or_path"] == str(tmp_path / "base")
    size = lambda folder: sum(f.stat().st_size for f in folder.rglob("*.safetensors"))  # noqa: E731
    assert size(apart) < 0.5 * size(merged)
    assert "adapter kept apart" in (apart / "README.md").read_text()

    texts, _ = reviews(data_dir, n=20)
    batch = tokenizer(texts, truncation=True, max_length=64, padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = {name: AutoModelForSequenceClassification.from_pretrained(tmp_path / name)(**batch).logits
                  for name in ("apart", "merged")}
        unadapted = AutoModelForSequenceClassification.from_pretrained(merged)
        unadapted.backbone = BertModel.from_pretrained(tmp_path / "base")  # the trained head on the base's features
        logits["unadapted"] = unadapted.eval()(**batch).logits
    assert torch.allclose(logits["apart"], logits["merged"], atol=1e-5)
    assert not torch.allclose(logits["merged"], logits["unadapted"], atol=1e-4)  # the adapter changed the model
    (tmp_path / "in.txt").write_text("\n".join(texts) + "\n")
    predictions = {}
    for name in ("apart", "merged"):
        out = cli("predict", name, "--input", "in.txt", "--output", f"{name}.csv")
        assert out.returncode == 0, out.stderr
        predictions[name] = (tmp_path / f"{name}.csv").read_text()
    assert predictions["apart"] == predictions["merged"]
    assert_clean_error(cli("export", "run", "--out", "x", "--adapters", "--quantize", "int8"), apart, "--adapters")


def test_predict_file_formats_give_the_models_predictions(tiny_model, tokenizer, data_dir, tmp_path, cli, cli_env):
    """CSV (with quotes and newlines), JSONL, Parquet and stdin text lines: one output row per text, in the input's
    order, with the model's own prediction; --label-column scores them."""
    import pandas as pd

    texts, labels = reviews(data_dir, n=60)
    texts[3] = 'a "quoted"\nreview, over two lines'
    batch = tokenizer(texts, truncation=True, max_length=64, padding=True, return_tensors="pt")
    model = decisive(copy.deepcopy(tiny_model), batch)
    save_pretrained(model, tokenizer, ["negative", "positive"], 64, tmp_path / "model")
    with torch.no_grad():
        expected = model(batch["input_ids"], batch["attention_mask"]).softmax(-1).numpy()
    names = np.array(["negative", "positive"])
    frame = pd.DataFrame({"text": texts, "label": names[labels]})
    frame.to_csv(tmp_path / "in.csv", index=False)
    frame.to_json(tmp_path / "in.jsonl", orient="records", lines=True)
    frame.to_parquet(tmp_path / "in.parquet")
    accuracy = float((expected.argmax(1) == labels).mean())
    for name in ("in.csv", "in.jsonl", "in.parquet"):
        out = cli("predict", str(tmp_path / "model"), "--input", str(tmp_path / name), "--label-column", "label",
                  "--output", str(tmp_path / "out.csv"), "--batch-size", "7")
        assert out.returncode == 0, out.stderr
        rows = list(csv.DictReader(open(tmp_path / "out.csv")))
        assert [r["label"] for r in rows] == list(names[expected.argmax(1)])
        assert np.allclose([float(r["prob_positive"]) for r in rows], expected[:, 1], atol=1e-5)
        assert f"accuracy {accuracy:.4f}" in out.stderr and "texts/s" in out.stderr
    lines = [t.replace("\n", " ") for t in texts[:5]]
    out = subprocess.run([*TRANSFER, "predict", str(tmp_path / "model"), "--input", "-"], input="\n".join(lines) + "\n",
                         capture_output=True, text=True, env=cli_env)
    assert out.returncode == 0, out.stderr
    assert len([json.loads(line) for line in out.stdout.splitlines()]) == 5


def test_saved_run_exports_and_predict_reproduces_its_accuracy(cli, saved_runs, session_env, tmp_path):
    """A run's saved model, exported with a model card; predict on a CSV of the run's target test split gives the
    run's target_test_accuracy."""
    from omegaconf import OmegaConf

    from transfer_cli.config import RunConfig
    from transfer_cli.data import target_test_texts

    run = next(r for r in saved_runs if "dann" in str(r))
    out = cli("export", str(run), "--out", str(tmp_path / "exported"))
    assert out.returncode == 0, out.stderr
    card = (tmp_path / "exported" / "README.md").read_text()
    metrics = json.loads((run / "metrics.json").read_text())
    assert "# dann: books → dvd" in card and "transfer run" in card and "target_test_accuracy" in card
    assert json.loads((tmp_path / "exported" / "config.json").read_text())["id2label"] == {"0": "negative", "1": "positive"}

    cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(RunConfig), OmegaConf.load(run / ".hydra" / "config.yaml")))
    texts, labels = target_test_texts(cfg, Path(session_env["TRANSFER_DATA_DIR"]))
    with open(tmp_path / "test.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["review", "gold"])
        writer.writerows(zip(texts, labels.tolist()))
    for model in (run, tmp_path / "exported"):  # a run folder or an exported one
        out = cli("predict", str(model), "--input", str(tmp_path / "test.csv"), "--text-column", "review",
                  "--label-column", "gold", "--output", str(tmp_path / "p.jsonl"))
        assert out.returncode == 0, out.stderr
        assert f"accuracy {metrics['target_test_accuracy']:.4f}" in out.stderr
        assert sum(1 for _ in open(tmp_path / "p.jsonl")) == len(texts)


def test_export_and_predict_errors(cli, saved_runs, tmp_path):
    run = saved_runs[0]
    assert_clean_error(cli("export", str(tmp_path), "--out", str(tmp_path / "x")), tmp_path, "not a run folder")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    assert_clean_error(cli("export", str(run), "--out", str(tmp_path / "full")), tmp_path, "not empty")
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"
    assert_clean_error(cli("export", str(run), "--out", str(tmp_path / "x"), "--adapters"), tmp_path, "no PEFT adapters")
    assert_clean_error(cli("predict", str(tmp_path), "--input", "x.csv"), tmp_path, "neither a run folder")
    assert_clean_error(cli("predict", str(run), "--input", str(tmp_path / "none.csv")), tmp_path, "no such input file")
    (tmp_path / "in.csv").write_text("body,label\nfine,positive\nbad,maybe\n")
    assert_clean_error(cli("predict", str(run), "--input", str(tmp_path / "in.csv")), tmp_path, "columns are: body, label")
    out = cli("predict", str(run), "--input", str(tmp_path / "in.csv"), "--text-column", "body", "--label-column",
              "label", "--output", str(tmp_path / "p.csv"))
    assert_clean_error(out, tmp_path, "row 2: label 'maybe'")
    assert not (tmp_path / "p.csv").exists()  # nothing half-written
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 cr\xe8me\n".encode("latin-1"))
    assert_clean_error(cli("predict", str(run), "--input", str(tmp_path / "latin1.txt")), tmp_path, "not UTF-8")
    (tmp_path / "broken.csv").write_text('text,label\n"unclosed,1\n')
    assert_clean_error(cli("predict", str(run), "--input", str(tmp_path / "broken.csv")), tmp_path, "cannot read")


def test_predict_streams_in_constant_memory(tiny_model, tokenizer, tmp_path, session_env):
    """100k lines take no more memory than 10k: the file is read, predicted and written chunk by chunk."""
    save_pretrained(tiny_model, tokenizer, ["negative", "positive"], 32, tmp_path / "model")

    def peak_kib(lines: int) -> int:
        path = tmp_path / f"{lines}.txt"
        path.write_text("".join(f"review {i}: the plot was fine, the acting less so\n" for i in range(lines)))
        probe = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL); "
                 "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
        out = subprocess.run([sys.executable, "-c", probe, *TRANSFER, "predict", str(tmp_path / "model"), "--input",
                              str(path), "--batch-size", "256"], capture_output=True, text=True, env=session_env)
        assert out.returncode == 0, out.stderr
        return int(out.stdout)

    small, large = peak_kib(10_000), peak_kib(100_000)
    assert large < small * 1.15, (small, large)


def test_onnx_and_int8_exports_agree_with_pytorch(saved_runs, tiny_model, tokenizer, data_dir, tmp_path, cli):
    """fp32 ONNX and int8 ONNX (a quarter of the weights' bytes) give PyTorch's labels on >= 98% of real reviews;
    predict runs them through onnxruntime."""
    import shutil

    texts, labels = reviews(data_dir, "kitchen", n=200)
    batch = tokenizer(texts, truncation=True, max_length=64, padding=True, return_tensors="pt")
    run = tmp_path / "run"
    shutil.copytree(saved_runs[0], run, ignore=shutil.ignore_patterns("model"))
    save_pretrained(decisive(copy.deepcopy(tiny_model), batch), tokenizer, ["negative", "positive"], 64, run / "model")
    with open(tmp_path / "in.csv", "w", newline="") as f:
        csv.writer(f).writerows([["text"], *([t] for t in texts)])
    predictions = {}
    for name, options in (("pytorch", []), ("onnx", ["--format", "onnx"]), ("int8", ["--quantize", "int8"])):
        out = cli("export", str(run), "--out", str(tmp_path / name), *options)
        assert out.returncode == 0, out.stderr
        out = cli("predict", str(tmp_path / name), "--input", str(tmp_path / "in.csv"), "--output", str(tmp_path / f"{name}.csv"))
        assert out.returncode == 0, out.stderr
        assert ("onnxruntime" in out.stderr) == (name != "pytorch")
        predictions[name] = [row["label"] for row in csv.DictReader(open(tmp_path / f"{name}.csv"))]
    assert len(set(predictions["pytorch"])) == 2
    assert predictions["onnx"] == predictions["pytorch"]
    agreement = np.mean([a == b for a, b in zip(predictions["int8"], predictions["pytorch"])])
    assert agreement >= 0.98
    assert not (tmp_path / "int8" / "model.safetensors").exists()
    size = lambda name, file: (tmp_path / name / file).stat().st_size  # noqa: E731
    assert size("int8", "model.onnx") < 0.35 * size("onnx", "model.onnx")


def test_pruning_drops_the_weakest_feed_forward_neurons(saved_runs, tiny_model, tokenizer, data_dir, tmp_path, cli):
    """--prune 0.5 halves every layer's feed-forward width; when half the neurons carry no weight, those are the
    ones dropped, and the logits do not change."""
    import shutil

    import transfer_cli.hf  # noqa: F401
    from transformers import AutoModelForSequenceClassification

    texts, _ = reviews(data_dir, n=20)
    batch = tokenizer(texts, truncation=True, max_length=64, padding=True, return_tensors="pt")
    model = decisive(copy.deepcopy(tiny_model), batch)
    with torch.no_grad():
        for layer in model.backbone.encoder.layer:  # neurons 1, 3, 5, ...: no input weights, GELU(0) = 0 out
            layer.intermediate.dense.weight[1::2] = 0
            layer.intermediate.dense.bias[1::2] = 0
        expected = model(batch["input_ids"], batch["attention_mask"])
    run = tmp_path / "run"
    shutil.copytree(saved_runs[0], run, ignore=shutil.ignore_patterns("model"))
    save_pretrained(model, tokenizer, ["negative", "positive"], 64, run / "model")
    out = cli("export", str(run), "--out", str(tmp_path / "pruned"), "--prune", "0.5")
    assert out.returncode == 0, out.stderr
    pruned = AutoModelForSequenceClassification.from_pretrained(tmp_path / "pruned")
    assert pruned.config.encoder["intermediate_size"] == 32 and pruned.backbone.encoder.layer[0].intermediate.dense.out_features == 32
    with torch.no_grad():
        assert torch.allclose(pruned(**batch).logits, expected, atol=1e-5)
    assert_clean_error(cli("export", str(run), "--out", str(tmp_path / "x"), "--prune", "1"), tmp_path / "x", "--prune=1.0")


def test_init_from_starts_from_the_adapted_model(tiny_model, tokenizer, tmp_path):
    """The encoder (and a matching linear head) come from the saved folder, not from the pretrained weights."""
    from transfer_cli.config import ModelConfig
    from transfer_cli.models import build_model

    save_pretrained(tiny_model, tokenizer, ["negative", "positive"], 64, tmp_path / "model")
    torch.manual_seed(1)  # a different random init than tiny_model's
    fresh = build_model(ModelConfig(name="tiny", random_init=dict(TINY_SHAPE)), 2, len(tokenizer))
    torch.manual_seed(1)
    started = build_model(ModelConfig(name="tiny", random_init=dict(TINY_SHAPE)), 2, len(tokenizer), init_from=tmp_path)
    for name, weight in tiny_model.state_dict().items():
        assert torch.equal(started.state_dict()[name], weight), name
    assert not torch.equal(fresh.state_dict()["head.1.weight"], tiny_model.state_dict()["head.1.weight"])


def test_init_from_in_a_run(cli, saved_runs, tmp_path):
    from .conftest import SMALL

    quoted = f"init_from='{saved_runs[0]}'"  # a sweep job's folder name holds = and ,
    out = cli("run", quoted, "source=books", "target=dvd", *SMALL)
    assert out.returncode == 0, out.stderr
    (metrics,) = [json.loads(p.read_text()) for p in tmp_path.rglob("metrics.json")]
    assert metrics["init_from"] == str(saved_runs[0])
    assert_clean_error(cli("run", f"init_from={tmp_path / 'nothing'}", *SMALL), tmp_path / "x", "init_from=")
    bigger = [*SMALL, "model.random_init.hidden_size=64"]
    assert_clean_error(cli("run", quoted, *bigger), tmp_path / "x", "does not match model=tiny")


def test_drift_monitor_alerts_on_another_domain_only(tiny_model, tokenizer, data_dir, caplog):
    """Reference: half the books reviews. More books reviews keep it quiet; electronics and kitchen reviews, which
    the encoder's features tell apart from books, raise one warning each time the distance crosses the threshold."""
    from transfer_cli.deploy.drift import DriftMonitor

    def features(domain):
        texts, _ = reviews(data_dir, domain, n=100)
        batch = tokenizer(texts, truncation=True, max_length=64, padding=True, return_tensors="pt")
        with torch.no_grad():
            return tiny_model.eval().encode(batch["input_ids"], batch["attention_mask"]).numpy()

    books = features("books")
    uniform = np.full((50, 2), 0.5)
    for domain, drifted in (("books", False), ("electronics", True), ("kitchen", True)):
        monitor = DriftMonitor({"features": books[::2], "probabilities": uniform}, ["negative", "positive"],
                               window=50, every=25, threshold=0.5)
        stream = books[1::2] if domain == "books" else features(domain)[:50]
        caplog.clear()
        for start in range(0, 50, 10):  # served in batches of 10
            monitor.observe(stream[start:start + 10], uniform[:10])
        state = monitor.report()
        assert state["window_texts"] == 50 and state["alert"] == drifted, (domain, state["pad"])
        assert len([r for r in caplog.records if "transfer again" in r.getMessage()]) == int(drifted)
