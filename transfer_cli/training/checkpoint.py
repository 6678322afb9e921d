"""The loop's checkpoints, in the run folder, so that a killed or preempted run resumes where it stopped.

    checkpoint/
      position.json        where the loop is (phase, epoch, batch, steps, each process's unlabelled draws), the phase's
                           best-so-far row and score, the history and the timings
      model.safetensors    the strategy's weights (every module it trains, the model's included)
      best.safetensors     the phase's best-so-far weights, when they are not the current ones
      average.safetensors  the phase's running weight average, in phases that average (training/averaging.py)
      optimizer.pt         optimiser, scheduler (and fp16 grad scaler) states: tensors and numbers only, loaded
                           with torch.load(weights_only=True)
      rng.pt               every process's RNG states (torch, CUDA, numpy, random)
    checkpoint/phases/
      after_N.safetensors  the weights at the end of phase N: a resumed run replays the strategy's phase generator
                           (pseudo-labels, frozen copies) from them

Accelerate's save_state/load_state would tie a checkpoint to the order of every prepare() call in the process, but
phases build their optimisers lazily (phase 2's exists only once phase 1 has trained); so the loop saves the objects
of the phase it is in. Only the main process writes. A checkpoint is written into a temporary folder that is then
renamed into place: a kill at any moment leaves the previous checkpoint or the new one, whole.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import torch
from safetensors.torch import load_file, save, save_file

from ..outputs import CHECKPOINT as FOLDER
from ..outputs import write_atomic

log = logging.getLogger(__name__)


def _tensors(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Own CPU copies: safetensors refuses tensors that share memory (tied weights)."""
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in state.items()}


def rng_state() -> Dict[str, Any]:
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "random": [py_state[0], torch.tensor(py_state[1], dtype=torch.int64), py_state[2]],
    }


def set_rng_state(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state(("MT19937", keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["random"]
    random.setstate((version, tuple(internal.tolist()), gauss))


class Checkpoints:
    """The checkpoint folder of one run folder, shared by all the run's processes."""

    def __init__(self, run_folder: Path, accelerator, config_digest: str = ""):
        self.path = Path(run_folder) / FOLDER
        self.accelerator, self.config_digest = accelerator, config_digest

    def position(self) -> Optional[Dict[str, Any]]:
        """The saved position (with history and timings), or None. A checkpoint of another config is dropped."""
        try:
            position = json.loads((self.path / "position.json").read_text())
        except (OSError, ValueError):
            return None
        if position.get("config_digest") != self.config_digest:
            log.warning("%s holds a checkpoint of another config: starting afresh", self.path)
            self.accelerator.wait_for_everyone()  # every process has read it before it goes
            self.remove()
            return None
        return position

    def save(self, position: Dict[str, Any], strategy, optimizer, scheduler, best: Optional[Dict[str, torch.Tensor]],
             average: Optional[Dict[str, torch.Tensor]] = None) -> None:
        """Every process takes part (the RNG states are gathered); the main process writes."""
        from accelerate.utils import gather_object

        rng = gather_object([rng_state()])  # one entry per process, in rank order
        if not self.accelerator.is_main_process:
            self.accelerator.wait_for_everyone()
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=self.path.parent, prefix=f".{FOLDER}."))
        try:
            save_file(_tensors(self.accelerator.unwrap_model(strategy).state_dict()), tmp / "model.safetensors")
            if best is not None:
                save_file(_tensors(best), tmp / "best.safetensors")
            if average is not None:
                save_file(_tensors(average), tmp / "average.safetensors")
            states = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}
            if self.accelerator.scaler is not None:
                states["scaler"] = self.accelerator.scaler.state_dict()
            torch.save(states, tmp / "optimizer.pt")
            torch.save(rng, tmp / "rng.pt")
            (tmp / "position.json").write_text(json.dumps({**position, "config_digest": self.config_digest}, default=float))
            if (self.path / "phases").exists():  # the phase-end weights stay where they are
                (self.path / "phases").rename(tmp / "phases")
            old = self.path.with_name(f".{FOLDER}.old")
            shutil.rmtree(old, ignore_errors=True)
            if self.path.exists():
                self.path.rename(old)
            tmp.rename(self.path)
            shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            if (tmp / "phases").exists() and not (self.path / "phases").exists():
                self.path.mkdir(exist_ok=True)
                (tmp / "phases").rename(self.path / "phases")
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        finally:
            self.accelerator.wait_for_everyone()

    def restore(self, strategy, optimizer, scheduler, average=None) -> Optional[Dict[str, torch.Tensor]]:
        """Load the weights, optimiser, scheduler, this process's RNG states and the weight average (into
        `average`, where the phase has one and it was saved); return the best-so-far weights."""
        self.accelerator.unwrap_model(strategy).load_state_dict(load_file(self.path / "model.safetensors"))
        states = torch.load(self.path / "optimizer.pt", weights_only=True)
        optimizer.load_state_dict(states["optimizer"])
        scheduler.load_state_dict(states["scheduler"])
        if "scaler" in states and self.accelerator.scaler is not None:
            self.accelerator.scaler.load_state_dict(states["scaler"])
        rng = torch.load(self.path / "rng.pt", weights_only=True)
        if len(rng) == self.accelerator.num_processes:
            set_rng_state(rng[self.accelerator.process_index])
        if average is not None and (self.path / "average.safetensors").exists():
            average.load_state_dict(load_file(self.path / "average.safetensors"))
        best = self.path / "best.safetensors"
        return load_file(best) if best.exists() else None

    def save_phase_end(self, number: int, strategy) -> None:
        if self.accelerator.is_main_process:
            state = _tensors(self.accelerator.unwrap_model(strategy).state_dict())
            write_atomic(self.path / "phases" / f"after_{number}.safetensors", save(state))
        self.accelerator.wait_for_everyone()

    def restore_phase_end(self, number: int, strategy) -> None:
        self.accelerator.unwrap_model(strategy).load_state_dict(load_file(self.path / "phases" / f"after_{number}.safetensors"))

    def remove(self) -> None:
        if self.accelerator.is_main_process:
            shutil.rmtree(self.path, ignore_errors=True)
