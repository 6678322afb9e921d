"""Experiment tracking through Accelerate's trackers (`logger=tensorboard | mlflow | csv`): every epoch's history
row as metrics (step = the epoch counted over all phases, from 1), the resolved config as hyperparameters.

An experiment groups runs: a sweep's jobs are one experiment (its folder, ROOT = `hydra.sweep.dir`); single runs
share one, `runs` (ROOT = `paths.output_dir`). RUN names a run within it: the job's folder relative to the sweep
folder (`seed=0`), or the run folder relative to `paths.output_dir` (`2026-11-30/10-00-00_000000`).

    tensorboard  ROOT/tensorboard/RUN/       event files (Accelerate's TensorBoardTracker); the config in the
                                             HPARAMS tab (a sub-run named by a timestamp) and in hparams.yml
    mlflow       paths.output_dir/mlflow.db  MLflow's local SQLite store, no server (or MLFLOW_TRACKING_URI when set):
                                             one experiment per sweep, named by its folder relative to
                                             paths.output_dir, or `runs`; one MLflow run per job, named RUN,
                                             tagged with its output_dir; params = the config
    csv          ROOT/csv/metrics.csv        run, step, one column per metric (CsvTracker below)
                 ROOT/csv/params.csv         run, one column per config key

Only the main process logs (Accelerate's trackers run on the main process only).
"""

from __future__ import annotations

import csv
import json
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum
from importlib.util import find_spec
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional

from accelerate.tracking import GeneralTracker, on_main_process

from ..errors import TransferError
from ..outputs import write_history

SINGLE_RUNS = "runs"  # the experiment of runs started without -m
MLFLOW_DB = "mlflow.db"  # in paths.output_dir
_INSTALL = 'pip install ".[tracking]" in the transfer checkout'


@dataclass(frozen=True)
class Names:
    root: Path  # the experiment's folder: the sweep folder, or paths.output_dir for single runs
    experiment: str
    run: str


def _value(option: Any) -> str:
    return option.value if isinstance(option, Enum) else str(option)


def _relative(path: Path, base: Path) -> Optional[str]:
    try:
        return path.relative_to(base).as_posix()
    except ValueError:
        return None


def names(output_dir: str, folder: Path) -> Names:
    """The experiment and run of the run in `folder` (a sweep's job when Hydra runs in multirun mode)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    output_dir_path, folder = Path(output_dir).expanduser().resolve(), Path(folder).resolve()
    hydra = HydraConfig.get() if HydraConfig.initialized() else None
    if hydra is not None and hydra.mode == RunMode.MULTIRUN:
        root = Path(hydra.sweep.dir).expanduser().resolve()
        return Names(root, _relative(root, output_dir_path) or str(root), _relative(folder, root) or folder.name)
    return Names(output_dir_path, SINGLE_RUNS, _relative(folder, output_dir_path) or folder.name)


def _require(logger: str, *modules: str) -> None:
    missing = [m for m in modules if find_spec(m) is None]
    if missing:
        raise TransferError(f"logger={logger} needs {', '.join(missing)}, not installed; install the tracking extra "
                            f"with {_INSTALL}")


def _mlflow_uri(output_dir: str) -> Optional[str]:
    """Our default store, a SQLite file in paths.output_dir; None where the user chose one (MLFLOW_TRACKING_URI)."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return None
    return f"sqlite:///{(Path(output_dir).expanduser().resolve() / MLFLOW_DB).as_posix()}"


def accelerator_options(cfg: Any, folder: Path) -> Dict[str, Any]:
    """The `Accelerator(...)` keyword arguments for `cfg.logger` (the typed config): log_with and project_dir (the
    folder the tracker writes to); {} for logger=none. A missing package is a TransferError naming the install."""
    logger = _value(cfg.logger)
    if logger == "none":
        return {}
    n = names(cfg.paths.output_dir, folder)
    if logger == "tensorboard":
        _require(logger, "tensorboard")
        return {"log_with": "tensorboard", "project_dir": str(n.root / "tensorboard")}
    if logger == "mlflow":
        # the SQLite store needs sqlalchemy and alembic, which mlflow-skinny leaves out
        _require(logger, "mlflow", *(("sqlalchemy", "alembic") if _mlflow_uri(cfg.paths.output_dir) else ()))
        return {"log_with": "mlflow", "project_dir": str(Path(cfg.paths.output_dir).expanduser().resolve())}
    return {"log_with": CsvTracker(n.root / "csv", n.run), "project_dir": str(n.root / "csv")}  # csv


def start(accelerator: Any, cfg_container: Dict[str, Any], folder: Path) -> None:
    """Start this run's trackers (`accelerator.init_trackers`) with the resolved config as hyperparameters.
    `cfg_container` is `OmegaConf.to_container(cfg, resolve=True)`; a no-op for logger=none."""
    logger = _value(cfg_container.get("logger", "none"))
    if logger == "none":
        return
    output_dir = cfg_container["paths"]["output_dir"]
    n = names(output_dir, folder)
    config = hyperparameters(cfg_container)
    if logger == "tensorboard":
        accelerator.init_trackers(n.run, config=config)  # Accelerate's TensorBoard run folder: project_dir/RUN
    elif logger == "mlflow":
        if accelerator.is_main_process:
            _mlflow_experiment(n.experiment, output_dir)
        options = {"run_name": n.run, "tags": {"output_dir": str(Path(folder).resolve())}}
        if cfg_container.get("description"):
            options["description"] = cfg_container["description"]
        accelerator.init_trackers(n.experiment, config=config, init_kwargs={"mlflow": options})
    else:
        accelerator.init_trackers(n.experiment, config=config)


def _mlflow_experiment(name: str, output_dir: str) -> None:
    """Point MLflow at the store and create the experiment once: parallel sweep jobs would race to create it
    (Accelerate's MLflowTracker then finds it by name)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    if mlflow.active_run() is not None:  # left by an earlier sweep job of this process that never ended training
        mlflow.end_run(status="FAILED")
    uri = _mlflow_uri(output_dir)
    if uri is None:  # MLFLOW_TRACKING_URI: the user's store, maybe a server
        lock, artifacts = None, None
    else:
        store = Path(output_dir).expanduser().resolve()
        lock, artifacts = store / f".{MLFLOW_DB}.lock", (store / "mlartifacts").as_uri()
        mlflow.set_tracking_uri(uri)
    with _locked(lock):  # also serialises the creation of the database's tables
        if mlflow.get_experiment_by_name(name) is None:
            try:
                mlflow.create_experiment(name, artifact_location=artifacts)
            except MlflowException:
                if mlflow.get_experiment_by_name(name) is None:
                    raise


def hyperparameters(container: Dict[str, Any]) -> Dict[str, Any]:
    """The resolved config as flat `section.key` hyperparameters (`train.lr`, `source.books.path`) of the types
    every tracker takes: numbers, strings, booleans and None; lists and empty mappings as JSON, enums by value."""
    flat: Dict[str, Any] = {}

    def walk(key: str, node: Any) -> None:
        if isinstance(node, dict) and node:
            for k, v in node.items():
                part = re.sub(r"[^\w\-. /]", "_", str(k))  # MLflow's allowed key characters
                walk(f"{key}.{part}" if key else part, v)
        elif isinstance(node, Enum):
            flat[key] = node.value
        elif node is None or isinstance(node, (bool, int, float, str)):
            flat[key] = node
        else:
            flat[key] = json.dumps(node, default=lambda o: o.value if isinstance(o, Enum) else str(o))

    walk("", container)
    return flat


@contextmanager
def _locked(path: Optional[Path]) -> Iterator[None]:
    """An exclusive lock on a lock file, for processes updating one shared file (parallel sweep jobs). Without
    fcntl (Windows), no lock."""
    try:
        import fcntl
    except ImportError:
        fcntl = None
    if path is None or fcntl is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class CsvTracker(GeneralTracker):
    """logger=csv: two CSV files that pandas reads directly, shared by the runs of one experiment and keyed by `run`:

        metrics.csv  run, step, then one column per logged value (an epoch's history row)
        params.csv   run, then one column per config key (train.lr, source.books.path, ...)

    `pd.read_csv("metrics.csv").merge(pd.read_csv("params.csv"), on="run")` joins them. A run that logs a step it
    logged in an earlier process (a rerun or resumed job) first drops its rows from that step on. Parallel jobs take
    turns through a lock file; each update rewrites the file atomically."""

    name = "csv"
    requires_logging_directory = False

    def __init__(self, folder: Path, run: str):
        super().__init__()
        self.folder, self.run = Path(folder), run
        self._steps: set = set()  # the steps this process logged

    @property
    def tracker(self) -> "CsvTracker":
        return self

    @on_main_process
    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)

    @on_main_process
    def store_init_configuration(self, values: Dict[str, Any]) -> None:
        row = {"run": self.run, **{k: "" if v is None else v for k, v in values.items()}}
        self._update("params.csv", lambda rows: [r for r in rows if r.get("run") != self.run] + [row])

    @on_main_process
    def log(self, values: Dict[str, Any], step: Optional[int] = None, **kwargs: Any) -> None:
        row = {"run": self.run, "step": "" if step is None else step, **values}

        def update(rows: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
            if step is None:
                return rows + [row]
            if step in self._steps:  # a second call for this step: add to its row
                for r in rows:
                    if r.get("run") == self.run and str(r.get("step")) == str(step):
                        r.update(values)
                return rows
            self._steps.add(step)
            return [r for r in rows if not (r.get("run") == self.run and _at_or_after(r.get("step"), step))] + [row]

        self._update("metrics.csv", update)

    def _update(self, name: str, change: Callable[[List[Dict[str, Any]]], List[Dict[str, Any]]]) -> None:
        path = self.folder / name
        with _locked(self.folder / ".lock"):
            try:
                with open(path, newline="") as f:
                    rows: List[Dict[str, Any]] = list(csv.DictReader(f))
            except FileNotFoundError:
                rows = []
            write_history(path, change(rows))  # rows -> CSV, written atomically


def _at_or_after(logged: Any, step: int) -> bool:
    try:
        return int(logged) >= step
    except (TypeError, ValueError):
        return False


@contextmanager
def tracked(accelerator, cfg_container: dict, folder: Path) -> Iterator[None]:
    """The trackers started for a run's duration, and ended however it ends."""
    start(accelerator, cfg_container, folder)
    try:
        yield
    finally:
        accelerator.end_training()
