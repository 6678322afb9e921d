"""The run folder: every file written atomically (temporary file, then rename), so a crash never leaves half a file.

    metrics.json   one flat object with stable keys (SCHEMA_VERSION), written only when the run completes
    history.csv    one row per epoch and phase
    status.json    running (+ pid, host, heartbeat) | completed | failed (+ error) | interrupted (+ signal, last
                   epoch, checkpoint), written at start, every minute while running, and at the end
    checkpoint/    the loop's latest checkpoint (training/checkpoint.py), pruned when the run completes
    env.json       package versions, git sha, platform
    test_predictions.csv  the selected model's class probabilities on the target test split, one row per example in
                   the split's order (what `transfer ensemble` averages)
    members.json   an ensemble's folder only: its member runs (`transfer ensemble`)
    run.log        the log (Hydra); .hydra/ holds the composed config and the overrides
    .claim         a sweep job's lock file (job_claim): held while a process runs the job
"""

from __future__ import annotations

import csv
import io
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from contextlib import contextmanager
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Dict, Iterator, List, Union

from .errors import TransferError

SCHEMA_VERSION = 1
CHECKPOINT = "checkpoint"  # the loop's checkpoint folder in a run folder (training/checkpoint.py)
PREDICTIONS = "test_predictions.csv"  # a run's target test predictions (write_predictions)
MEMBERS = "members.json"  # in an ensemble's run folder (transfer_cli/ensemble.py): its member runs
# An exported model folder (models/exported.py, deploy/export.py):
REFERENCE_FILE = "drift_reference.safetensors"  # a sample of the target domain, as the model sees it (deploy/drift.py)
ADAPTER_DIR = "adapter"  # a PEFT run's adapter on its own, in PEFT's format (`transfer export --adapters`)
HEAD_FILE = "head.safetensors"  # the head's weights, in an adapter export (which holds no encoder weights)
ENSEMBLE_FILE = "ensemble.json"  # an exported ensemble: its member folders (members/N/), whose probabilities it averages
_UMASK = os.umask(0)
os.umask(_UMASK)


def write_atomic(path: Path, content: Union[str, bytes]) -> None:
    """Write to a temporary file beside `path`, flush it to disk, then rename it over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(content.encode("utf-8") if isinstance(content, str) else content)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes files private; outputs are ordinary files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def staged_folder(folder: Path) -> Iterator[Path]:
    """A temporary folder beside `folder` to write into; when the block succeeds it replaces `folder` in one rename
    (readers see the whole folder or none), and when it fails it is removed."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        yield staging
        for file in [staging, *staging.rglob("*")]:  # mkdtemp made it private; outputs are ordinary files
            os.chmod(file, (0o777 if file.is_dir() else 0o666) & ~_UMASK)
        if folder.exists():
            shutil.rmtree(folder)
        staging.rename(folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_json(path: Path, data: Dict[str, Any]) -> None:
    write_atomic(path, json.dumps(data, indent=2, default=str) + "\n")


def read_json(path: Path) -> Any:
    """The JSON object in a file, or None where it is missing or unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def write_history(path: Path, rows: List[Dict[str, Any]]) -> None:
    columns = list(dict.fromkeys(k for row in rows for k in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(path, buffer.getvalue())


def write_predictions(path: Path, labels: Any, probabilities: Any, names: List[str]) -> None:
    """One row per test example, in the split's order: `index` (its position in the split), `label` (the true class
    index), `prediction` (the most probable class) and `p_<name>` per class (its probability)."""
    import numpy as np

    probabilities = np.asarray(probabilities, dtype=np.float64)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["index", "label", "prediction", *(f"p_{name}" for name in names)])
    for i, (label, row) in enumerate(zip(np.asarray(labels).tolist(), probabilities)):
        writer.writerow([i, int(label), int(row.argmax()), *(repr(float(p)) for p in row)])
    write_atomic(path, buffer.getvalue())


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def write_status(folder: Path, status: str, **extra: Any) -> None:
    write_json(folder / "status.json", {"status": status, "time": now(), **extra})


HEARTBEAT_SECONDS = 60


@contextmanager
def job_claim(folder: Path) -> Iterator[bool]:
    """An exclusive claim on a sweep job's folder for the block; False when another process holds it, so that
    several `transfer run -m` of one sweep share out its jobs. A POSIX lock: the system drops it when its process
    ends, however it ends, and network file systems that support locks share it between machines."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no sharing, every job is claimed
        yield True
        return
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".claim", "a") as lock:
        try:
            fcntl.lockf(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            yield False
            return
        yield True


class Heartbeat:
    """While a run runs, its status.json says `running` with the process's pid and host, and a heartbeat time
    renewed every minute, so that `transfer report` can tell a live run from one whose process is gone."""

    def __init__(self, folder: Path, **extra: Any):
        self.folder, self.extra = folder, {"pid": os.getpid(), "host": socket.gethostname(), **extra}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._beat, daemon=True)

    def _write(self) -> None:
        with self._lock:
            if not self._stop.is_set():
                write_status(self.folder, "running", heartbeat=now(), **self.extra)

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            self._write()

    def __enter__(self) -> "Heartbeat":
        self._write()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        with self._lock:  # no heartbeat may land after the final status
            self._stop.set()


def process_gone(status: Dict[str, Any]) -> bool:
    """A `running` status whose process is gone: its pid has ended on this host, or, on another host, its
    heartbeat is more than 3 beats old."""
    if status.get("status") != "running" or "pid" not in status:
        return False
    if status.get("host") == socket.gethostname():
        try:
            os.kill(int(status["pid"]), 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # alive, another user's
            pass
        return False
    try:
        beat = datetime.fromisoformat(status.get("heartbeat", ""))
    except ValueError:
        return False
    return (datetime.now(timezone.utc) - beat).total_seconds() > 3 * HEARTBEAT_SECONDS


def environment() -> Dict[str, Any]:
    versions = {}
    for package in ("transfer-cli", "torch", "transformers", "datasets", "accelerate", "hydra-core", "scikit-learn"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = None
    import torch

    return {"python": sys.version.split()[0], "platform": platform.platform(), "packages": versions, "git_sha": _git_sha(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "cpu_count": os.cpu_count()}


def _git_sha() -> str | None:
    """The commit of the transfer source tree, when it runs from a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def read_overrides(folder: Path) -> List[str]:
    """A run's command-line overrides (`.hydra/overrides.yaml`), in order; none when the file is missing."""
    file = folder / ".hydra" / "overrides.yaml"
    return [line[2:].strip() for line in file.read_text().splitlines() if line.startswith("- ")] if file.exists() else []


def model_folder(path: Path) -> Path:
    """An exported folder, or a run folder's saved model; an ensemble's folder (exported, or its run folder) as it
    is (deploy/runtime.py loads its members)."""
    if (path / "config.json").exists() or is_ensemble_folder(path):
        return path
    if (path / "model" / "config.json").exists():
        return path / "model"
    if (path / ".hydra").exists():
        raise TransferError(f"run {path} has no saved model; run it again with train.save_model=true")
    raise TransferError(f"{path} is neither a run folder nor an exported model folder (no config.json)")


def is_ensemble_folder(path: Path) -> bool:
    """An exported ensemble (ensemble.json) or an ensemble's run folder (members.json, `transfer ensemble`)."""
    return (path / ENSEMBLE_FILE).exists() or (path / MEMBERS).exists()
