"""The Hydra job: validate -> hardware -> data -> model + strategy -> fit -> metrics, written to the run folder."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import time
import traceback
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Dict, Optional

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table

from . import __version__
from .config import register_resolvers, run_config_dirs
from .console import print_table
from .errors import TransferError, as_user_error
from .outputs import (CHECKPOINT, SCHEMA_VERSION, Heartbeat, environment, job_claim, now, process_gone, read_json,
                      write_history, write_json, write_status)
from .training.signals import Interrupted, StopSignals

log = logging.getLogger("transfer")
register_resolvers()  # at import: the worker processes of parallel launchers import this module, not the CLI


def validate(cfg: Any) -> None:
    """Range checks the schema's types cannot express; each names the key and what is allowed."""
    d, t = cfg.data, cfg.train
    checks = [
        (t.lr > 0, f"train.lr={t.lr} must be > 0"),
        (t.head_lr is None or t.head_lr > 0, f"train.head_lr={t.head_lr} must be > 0 (or null)"),
        (t.epochs >= 1, f"train.epochs={t.epochs} must be >= 1"),
        (t.batch_size >= 1, f"train.batch_size={t.batch_size} must be >= 1"),
        (t.eval_batch_size >= 1, f"train.eval_batch_size={t.eval_batch_size} must be >= 1"),
        (t.grad_accum_steps >= 1, f"train.grad_accum_steps={t.grad_accum_steps} must be >= 1"),
        (0 <= t.warmup_ratio < 1, f"train.warmup_ratio={t.warmup_ratio} must be in [0, 1)"),
        (t.weight_decay >= 0, f"train.weight_decay={t.weight_decay} must be >= 0"),
        (t.patience >= 1, f"train.patience={t.patience} must be >= 1"),
        (cfg.model.freeze_layers >= 0, f"model.freeze_layers={cfg.model.freeze_layers} must be >= 0"),
        (d.max_length >= 8, f"data.max_length={d.max_length} must be >= 8"),
        (0 < d.source_val_fraction < 1, f"data.source_val_fraction={d.source_val_fraction} must be in (0, 1)"),
        (0 < d.target_test_fraction < 1, f"data.target_test_fraction={d.target_test_fraction} must be in (0, 1)"),
        (cfg.hardware.threads >= 0, f"hardware.threads={cfg.hardware.threads} must be >= 0 (0 = all cores)"),
        (cfg.init_from is None or Path(cfg.init_from).expanduser().exists(),
         f"init_from={cfg.init_from} does not exist; give a run folder saved with train.save_model=true or an exported folder"),
        (not (t.save_model and cfg.peft.method.value == "prefix_tuning"),
         "train.save_model=true cannot save a prefix-tuning run: its prefixes cannot be merged into the model's weights "
         "(a Hugging Face folder has no place for them); use peft=lora or peft=ia3, or train.save_model=false"),
        (not (t.save_model and cfg.strategy.get("method") == "cloze"),
         "train.save_model=true cannot save a strategy.method=cloze run: an exported model has no place for its prompt; "
         "use strategy.method=similarity, or train.save_model=false"),
        (len(cfg.source) >= 1, "choose at least one source domain, e.g. source=books"),
        (len(cfg.target) == 1, f"choose exactly one target domain, e.g. target=movies (got {list(cfg.target)})"),
    ]
    for key in ("max_source_train", "max_source_val", "max_target_pool", "max_target_test", "max_target_validation"):
        value = getattr(d, key)
        checks.append((value is None or value >= 1, f"data.{key}={value} must be >= 1 (or null for all)"))
    for ok, message in checks:
        if not ok:
            raise TransferError(message)
    target = next(iter(cfg.target.values()))
    for name, domain in cfg.source.items():
        if name in cfg.target:
            raise TransferError(f"'{name}' is both a source and the target; choose a different target")
        if list(domain.labels) != list(target.labels):
            raise TransferError(
                f"source '{name}' has labels {list(domain.labels)} but target '{target.name}' has {list(target.labels)}"
            )


def choices(cfg: DictConfig) -> Dict[str, str]:
    """The option picked in each group; several sources join with '+' (Hydra records no choice for lists)."""
    picked = HydraConfig.get().runtime.choices
    out = {group: picked.get(group) for group in ("model", "strategy", "peft", "hardware", "experiment")}
    out.update(source="+".join(cfg.source), target="+".join(cfg.target))
    return out


def run(cfg: DictConfig) -> float:
    """One run; returns its label-free score (`label_free_score`, what a sweeper such as Optuna maximises; never a
    target-label metric). Failures leave status.json (with the error) and no metrics.json.

    In a sweep, a job whose folder holds a completed run of the same config is skipped (a rerun resumes the sweep),
    a job whose source is its target is skipped (sweeps over all pairs), and so is a job that another process has
    claimed (several `transfer run -m` of one sweep share out its jobs). A folder with a checkpoint of the same
    config resumes from it (a sweep job's; hydra.run.dir set to a killed run's; resume=auto or resume=PATH).
    hardware.processes=N launches N processes (torchrun) that share this run folder."""
    hydra = HydraConfig.get()
    folder = Path(hydra.runtime.output_dir)
    if hydra.mode == RunMode.RUN and hydra.sweeper.get("params"):
        raise TransferError(f"experiment={hydra.runtime.choices.get('experiment')} defines a sweep; run it with -m")
    digest = config_digest(cfg)
    if hydra.mode != RunMode.MULTIRUN:
        return _run_and_record(cfg, folder, digest)
    with job_claim(folder) as claimed:
        if not claimed:
            _skip("skipped: another process is running this job in %s", folder)
            return float("nan")
        status, previous = read_json(folder / "status.json") or {}, read_json(folder / "metrics.json") or {}
        if status.get("status") == "completed" and previous.get("config_digest") == digest:
            _skip("skipped: completed before in %s (delete the folder to run it again)", folder)
            return previous["label_free_score"]
        if set(cfg.source) & set(cfg.target):
            reason = f"source = target ({'+'.join(cfg.target)})"
            if status.get("reason") != reason:
                write_status(folder, "skipped", reason=reason)
            _skip("skipped: the source is the target (%s)", "+".join(cfg.target))
            return float("nan")
        return _run_and_record(cfg, folder, digest)


def _skip(message: str, *args: Any) -> None:
    """A skipped job's line goes to the console only: a rerun of a sweep leaves the run files of its finished jobs
    as they were (Hydra rewrites only `.hydra/`), and a job another process runs keeps its run.log to itself.
    Hydra sets the handlers up anew for each job, so dropping this job's file handler touches no other job."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, logging.FileHandler)]:
        root.removeHandler(handler)
        handler.close()
    log.info(message, *args)


def _run_and_record(cfg: DictConfig, folder: Path, digest: str) -> float:
    """The run, its status from start to end, and its metrics."""
    main = int(os.environ.get("RANK", "0")) == 0  # under torchrun, only rank 0 writes the run folder
    folder = resume_folder(cfg.resume, folder, Path(cfg.paths.output_dir), digest, main)
    if cfg.hardware.processes > 1 and "WORLD_SIZE" not in os.environ:
        return launch_processes(cfg.hardware.processes, folder)
    if main:
        (folder / "metrics.json").unlink(missing_ok=True)  # a run of another config in this folder
    started = time.perf_counter()
    progress: Dict[str, Any] = {"epochs_completed": 0}
    try:
        with StopSignals().installed() as stop, (Heartbeat(folder, config_digest=digest) if main else nullcontext()):
            metrics = _run(cfg, folder, started, digest, stop, progress, main)
    except Interrupted as e:
        if main:
            write_status(folder, "interrupted", signal=str(e), config_digest=digest, **progress,
                         checkpoint=str(folder / CHECKPOINT) if e.checkpointed else None)
        raise
    except TransferError as e:
        if main:
            write_status(folder, "failed", error=str(e), error_type="TransferError", config_digest=digest, **progress)
        raise
    except BaseException as e:
        user_error = as_user_error(e)
        if main and user_error:
            write_status(folder, "failed", error=str(user_error), error_type="TransferError", config_digest=digest,
                         **progress)
        elif main:
            write_status(folder, "failed", error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc(),
                         config_digest=digest, **progress)
        if user_error:
            raise user_error from None
        raise
    if main:
        write_json(folder / "metrics.json", metrics)
        write_status(folder, "completed", finished=now(), seconds=round(time.perf_counter() - started, 2))
        _print_table(metrics, folder)
    return metrics["label_free_score"]


def resume_folder(resume: Optional[str], folder: Path, output_dir: Path, digest: str, main: bool = True) -> Path:
    """The folder the run goes on in: its own (Hydra's), or an interrupted run's (resume=auto or resume=PATH) of the
    same config, whose checkpoint it continues."""
    if resume in (None, "", "null"):
        return folder
    if resume == "auto":
        candidates = []
        for status_file in output_dir.expanduser().rglob("status.json"):
            status = read_json(status_file) or {}
            unfinished = status.get("status") in ("interrupted", "failed") or process_gone(status)
            if (unfinished and status.get("config_digest") == digest and status_file.parent != folder
                    and (status_file.parent / CHECKPOINT / "position.json").exists()):
                candidates.append((status.get("time", ""), status_file.parent))
        if not candidates:
            log.info("resume=auto: no interrupted run of this config under %s with a checkpoint; starting afresh",
                     output_dir)
            return folder
        chosen = max(candidates)[1]
    else:
        chosen = Path(resume).expanduser()
        status = read_json(chosen / "status.json")
        if status is None or not (chosen / CHECKPOINT / "position.json").exists():
            raise TransferError(f"resume={resume}: no run folder with a checkpoint there; give the folder of an "
                                "interrupted run, or resume=auto")
        if status.get("config_digest") != digest:
            raise TransferError(f"resume={resume}: that run has another config; resume it with its own overrides "
                                f"(see {chosen / '.hydra' / 'overrides.yaml'})")
        if status.get("status") == "completed":
            raise TransferError(f"resume={resume}: that run has completed; nothing to resume")
    log.info("continuing the interrupted run in %s", chosen)
    if main:
        handler = logging.FileHandler(chosen / "run.log")  # its log goes on where it started
        handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
        logging.getLogger().addHandler(handler)
    return chosen


def launch_processes(processes: int, folder: Path) -> float:
    """hardware.processes=N: the same job on N local processes (torchrun; gloo on CPUs), all in this run folder.
    Rank 0 writes the folder; this process waits and returns its score. A stop signal goes on to the processes
    as SIGTERM (torchrun passes it to each), so that they checkpoint before this process stops, or before a
    launcher's handler (submitit's requeue) gets the signal."""
    import subprocess
    import sys

    from .hardware import available_cores

    dirs = run_config_dirs()[1:]  # the user's --config-dir, if any
    search = [f"hydra.searchpath=[{','.join(f'file://{d}' for d in dirs)}]"] if dirs else []
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
               "-m", "transfer_cli.cli", "run", *HydraConfig.get().overrides.task, *search, f"hydra.run.dir={folder}"]
    log.info("launching %d processes: %s", processes, " ".join(command))
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, available_cores() // processes))}
    child = subprocess.Popen(command, env=env)
    with StopSignals().installed() as stop, stop.deferred():
        while child.poll() is None:
            if stop.requested:
                child.send_signal(signal.SIGTERM)
                child.wait()
                stop.stop(stop.requested, checkpointed=True)
            time.sleep(0.2)
    status = read_json(folder / "status.json") or {}
    if child.returncode != 0 or status.get("status") != "completed":
        raise TransferError(status.get("error") or f"the {processes} processes failed (exit code {child.returncode}); "
                            f"see {folder / 'run.log'}")
    return read_json(folder / "metrics.json")["label_free_score"]


def config_digest(cfg: DictConfig) -> str:
    """What a run computes: the resolved config without its paths (where data, cache and outputs live), where it
    resumes from, how it is tracked, and whether it keeps its checkpoints; and the version of transfer."""
    content = OmegaConf.to_container(cfg, resolve=True)
    for key in ("paths", "resume", "logger"):
        content.pop(key, None)
    content.get("train", {}).pop("keep_checkpoints", None)
    newer_than_the_sweeps = (("data", "split_seed"), ("strategy", "average_from"), ("strategy", "sharpness_rho"))
    for group, key in newer_than_the_sweeps:  # at null, a completed job keeps its digest and is not run again
        if group in content and content[group].get(key, 0) is None:
            content[group].pop(key)
    content["transfer_version"] = __version__
    return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()


def sharing_jobs() -> int:
    """How many sweep jobs share this machine's cores at once: the joblib launcher's n_jobs, else 1."""
    launcher = HydraConfig.get().launcher
    if "joblib" not in str(launcher.get("_target_", "")):
        return 1
    from .hardware import available_cores

    n_jobs = launcher.get("n_jobs") or 1
    return n_jobs if n_jobs > 0 else max(1, available_cores() + 1 + n_jobs)  # joblib: -1 = all cores


def _run(cfg: DictConfig, folder: Path, started: float, digest: str, stop, progress: Dict[str, Any],
         main: bool) -> Dict[str, Any]:
    # heavy imports here, so that `--help`, `--cfg` and config errors answer at once
    import torch

    from .data import build_data
    from .hardware import setup
    from .models import build_model, load_backbone_config, load_tokenizer, max_positions
    from .strategies import strategy_params
    from .training import tracking
    from .training.checkpoint import Checkpoints
    from .training.loop import fit
    from .training.validators import VALIDATORS, score

    typed = OmegaConf.to_object(cfg)  # the schema's dataclasses, checked by Hydra at composition
    validate(typed)
    strategy_cls, params = strategy_params(OmegaConf.to_container(cfg.strategy))

    jobs = sharing_jobs()
    hardware = setup(typed.hardware, typed.seed, jobs, Path(typed.paths.cache_dir).expanduser(),
                     **tracking.accelerator_options(typed, folder))
    accelerator = hardware.accelerator
    if main:
        write_json(folder / "env.json", {**environment(), "precision": hardware.precision,
                                         "precision_reason": hardware.precision_reason,
                                         "world_size": hardware.world_size})
    with tracking.tracked(accelerator, OmegaConf.to_container(cfg, resolve=True), folder):
        tokenizer = load_tokenizer(typed.model)
        backbone_config = load_backbone_config(typed.model)
        limit = max_positions(backbone_config)
        if typed.data.max_length > limit:
            raise TransferError(f"data.max_length={typed.data.max_length} exceeds the limit of model '{typed.model.name}' ({limit}); use data.max_length<={limit}")

        t0 = time.perf_counter()
        data = build_data(typed, tokenizer, Path(typed.paths.data_dir).expanduser(), Path(typed.paths.cache_dir).expanduser())
        data_seconds = time.perf_counter() - t0
        log.info("data: %s", data.sizes())

        init_from = Path(typed.init_from).expanduser() if typed.init_from else None
        model = build_model(typed.model, data.num_labels, len(tokenizer), backbone_config, typed.peft, init_from)
        strategy = strategy_cls(params, model)
        checkpoints = Checkpoints(folder, accelerator, digest)

        def on_epoch(history):
            write_history(folder / "history.csv", history)
            progress["epochs_completed"] = len(history)

        # parallel jobs' bars would garble one terminal; other ranks keep quiet
        result = fit(strategy, data, typed, accelerator, tokenizer, progress_bar=jobs == 1 and main,
                     checkpoints=checkpoints, stop=stop, on_epoch=on_epoch)
        if typed.train.save_model:  # a Hugging Face folder: what `transfer export`, `predict` and `serve` read
            from .models.exported import save_pretrained
            from .evaluate import predict

            features, logits = predict(strategy.model, data.target_validation, typed.train.eval_batch_size,
                                       tokenizer.pad_token_id, accelerator)  # every process: a gathered inference
            if main:
                labels = next(iter(typed.target.values())).labels
                reference = {"features": features.numpy(), "probabilities": logits.softmax(-1).numpy()}
                fixed = typed.model.random_init is None and typed.init_from is None  # can a user load the base again?
                base = {k: getattr(typed.model, k) for k in ("name", "name_or_path", "package")} if fixed else None
                save_pretrained(strategy.model, tokenizer, labels, typed.data.max_length, folder / "model", reference, base)
        test_digest = _write_test_predictions(strategy.model, data.target_test, typed, accelerator, tokenizer, folder, main)
        if not typed.train.keep_checkpoints:
            checkpoints.remove()

    final = result.final
    trainable = sum(p.numel() for p in strategy.parameters() if p.requires_grad)
    return {
        "schema_version": SCHEMA_VERSION,
        "status": "completed",
        "transfer_version": __version__,
        **choices(cfg),
        "protocol": typed.protocol.value,
        "oracle": strategy_cls.oracle,
        "target_labels": strategy_cls.target_labels,
        "target_labels_used": data.target_labels_used,
        "source_labels_used": len(data.source_train) if strategy.source_labels else 0,
        "init_from": typed.init_from,
        "seed": typed.seed,
        "config_digest": digest,
        "test_split_digest": test_digest,  # runs with the same digest were tested on the same examples (ensembles)
        "device": hardware.device,
        "precision": hardware.precision,
        "precision_reason": hardware.precision_reason,
        "cpu_capability": hardware.cpu_capability,
        "world_size": hardware.world_size,
        "global_batch_size": typed.train.batch_size * hardware.world_size * typed.train.grad_accum_steps,
        "threads": torch.get_num_threads(),
        **data.sizes(),
        "max_length": typed.data.max_length,
        "target_test_accuracy": final["target_test_accuracy"],
        "target_test_f1_macro": final["target_test_f1_macro"],
        "source_val_accuracy": final["source_val_accuracy"],
        "source_val_f1_macro": final["source_val_f1_macro"],
        "transfer_gap": final["source_val_accuracy"] - final["target_test_accuracy"],
        "selection": final["selection"],  # a validator (label-free), target_val (oracle) or last
        "selection_score": final["selection_score"],
        "label_free_score": score(typed.selection.value, final),  # the run's validator, whatever selected
        **{column: final[column] for column, _ in VALIDATORS.values()},
        "selected_phase": final["phase"],
        "selected_epoch": final["epoch"],
        "epochs_run": sum(row["epoch"] > 0 for row in result.history),  # (a zero-shot run's one row is epoch 0)
        "trainable_parameters": trainable,
        "total_parameters": sum(p.numel() for p in strategy.parameters()),
        "data_seconds": round(data_seconds, 3),
        "train_seconds": round(result.train_seconds, 3),
        "eval_seconds": round(result.eval_seconds, 3),
        "total_seconds": round(time.perf_counter() - started, 3),  # of this invocation, when resumed
        "train_samples_per_second": round(result.train_samples / max(result.train_seconds, 1e-9), 2),
        "eval_samples_per_second": round(result.eval_samples / max(result.eval_seconds, 1e-9), 2),
        "output_dir": str(folder),
    }


def _write_test_predictions(model, test, typed, accelerator, tokenizer, folder: Path, main: bool) -> str:
    """The selected model's class probabilities on the target test split, in its order (test_predictions.csv: what
    `transfer ensemble` averages); returns the split's digest. Every process infers (a gathered inference), rank 0
    writes."""
    from .data import split_digest
    from .evaluate import predict
    from .outputs import PREDICTIONS, write_predictions

    _, logits = predict(model, test, typed.train.eval_batch_size, tokenizer.pad_token_id, accelerator)
    if main:
        labels = next(iter(typed.target.values())).labels
        write_predictions(folder / PREDICTIONS, test.labels, logits.softmax(-1).numpy(), labels)
    return split_digest(test)


def _print_table(metrics: Dict[str, Any], folder: Path) -> None:
    table = Table(title=f"{metrics['strategy']}: {metrics['source']} -> {metrics['target']}" + (" (ORACLE)" if metrics["oracle"] else ""))
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in ("target_test_accuracy", "target_test_f1_macro", "source_val_accuracy", "transfer_gap", "selection",
                "target_labels_used", "source_labels_used", "trainable_parameters", "train_samples_per_second",
                "total_seconds", "device", "precision"):
        value = metrics[key]
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    console = Console()
    print_table(table, console)
    console.print(f"outputs: {folder}")
