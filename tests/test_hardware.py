"""The precision rule: bf16 on a CPU only where it is native and measured faster, recorded with its reason; forced
bf16 on a CPU that emulates it warns."""

from __future__ import annotations

import json
import logging
import os

import pytest
import torch

from transfer_cli import hardware
from transfer_cli.hardware import bf16_speedup, choose_precision, cpu_native_bf16, resolve_precision

from .conftest import SMALL


@pytest.mark.parametrize("onednn, avx512_bf16, amx, machine, native", [
    (False, False, False, "x86_64", False),  # AVX2 only: oneDNN has no bf16 at all
    (True, False, False, "x86_64", False),  # plain AVX512: oneDNN says yes, but emulates bf16
    (True, True, False, "x86_64", True),  # AVX512-BF16
    (True, False, True, "x86_64", True),  # AMX
    (True, False, False, "aarch64", True),  # ARM: oneDNN's answer is the CPU's bf16 instructions
    (False, False, False, "aarch64", False),
])
def test_native_bf16_detection(monkeypatch, onednn, avx512_bf16, amx, machine, native):
    monkeypatch.setattr(hardware, "_onednn_bf16", lambda: onednn)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(hardware.platform, "machine", lambda: machine)
    assert cpu_native_bf16() is native


def cpu(monkeypatch, capability: str, native: bool, speedup: float = 1.5) -> None:
    monkeypatch.setattr(hardware, "cpu_native_bf16", lambda: native)
    monkeypatch.setattr(hardware, "cpu_capability", lambda: capability)
    monkeypatch.setattr(hardware, "bf16_speedup", lambda cache_dir=None: speedup)


def test_avx2_cpu_trains_in_fp32(monkeypatch):
    cpu(monkeypatch, "AVX2", native=False)
    assert choose_precision("auto", "cpu") == ("fp32", "fp32: this CPU has no native bf16 (AVX2)")


def test_native_bf16_cpu_trains_in_bf16_where_it_is_faster(monkeypatch):
    cpu(monkeypatch, "AVX512", native=True, speedup=1.5)
    assert choose_precision("auto", "cpu") == ("bf16", "bf16: this CPU has native bf16 (AVX512), measured 1.50x "
                                                       "fp32's speed")
    cpu(monkeypatch, "AVX512", native=True, speedup=0.7)  # AVX512-BF16 without AMX, as measured here
    assert choose_precision("auto", "cpu") == ("fp32", "fp32: this CPU has native bf16 (AVX512), but bf16 measured "
                                                       "0.70x fp32's speed here")


def test_the_probe_is_measured_once_per_machine(monkeypatch, tmp_path):
    calls, seconds = [], {}
    real = hardware._time_block
    monkeypatch.setattr(hardware, "_time_block",
                        lambda bf16, tokens: calls.append(bf16) or seconds.setdefault(bf16, real(bf16, tokens, 1)))
    first = bf16_speedup(tmp_path, tokens=64)
    assert calls == [False, True] and first == round(seconds[False] / seconds[True], 3)  # fp32's time over bf16's
    assert bf16_speedup(tmp_path, tokens=64) == first and len(calls) == 2  # from the cache
    assert (tmp_path / "precision_probe.json").exists()


def test_forced_bf16_on_an_emulating_cpu_warns(monkeypatch, caplog):
    cpu(monkeypatch, "AVX2", native=False)
    with caplog.at_level(logging.WARNING):
        assert resolve_precision("bf16", "cpu") == "bf16"
    assert "emulated and much slower" in caplog.text and "AVX2" in caplog.text
    caplog.clear()
    cpu(monkeypatch, "AVX512", native=True)
    with caplog.at_level(logging.WARNING):
        resolve_precision("bf16", "cpu")
    assert caplog.text == ""


def test_cuda_without_bf16_uses_fp16(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    assert choose_precision("auto", "cuda")[0] == "fp16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert choose_precision("auto", "cuda")[0] == "bf16"


def test_the_decision_is_logged_and_recorded(cli, tmp_path):
    out = cli("run", "hardware=cpu", "source=books", "target=dvd", *SMALL)
    assert out.returncode == 0, out.stderr
    (folder,) = [p.parent for p in (tmp_path / "outputs").rglob("metrics.json")]
    metrics, env = (json.loads((folder / name).read_text()) for name in ("metrics.json", "env.json"))
    why = metrics["precision_reason"]
    assert metrics["precision"] == env["precision"] and why == env["precision_reason"]
    assert why.startswith(f"{metrics['precision']}: this CPU has ")
    assert ("no native bf16" in why) == (not cpu_native_bf16())  # measured only where bf16 is native
    assert metrics["cpu_capability"] == env["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert (folder / "run.log").read_text().count(f"precision {why}") == 1


def test_deterministic_runs_set_the_cublas_workspace_that_cuda_needs(monkeypatch):
    """Under torch.use_deterministic_algorithms, CUDA raises on every cuBLAS matmul unless CUBLAS_WORKSPACE_CONFIG
    is set before the first one; a user's own setting stays."""
    from transfer_cli.config import Device, HardwareConfig, Precision

    config = HardwareConfig(name="cpu", device=Device.cpu, precision=Precision.fp32, deterministic=True)
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", "")  # so that teardown restores what was there, if anything
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG")
    try:
        hardware.setup(config, 0)
        assert torch.are_deterministic_algorithms_enabled()
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
        monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")
        hardware.setup(config, 0)
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"
    finally:
        torch.use_deterministic_algorithms(False)
