"""The `transfer` entry point: a small dispatcher in front of the Hydra app.

`transfer run ...` hands the rest of the command line to Hydra untouched, so -m, --cfg, --info, -c and --help work
as in any Hydra app. Errors a user can fix come out as one line with exit code 2 (a traceback only with
HYDRA_FULL_ERROR=1 or TRANSFER_DEBUG=1)."""

from __future__ import annotations

import importlib
import os
import re
import sys
from typing import Iterable, List, Optional

from . import __version__
from .config import DOMAIN_ROLES, GROUPS, describe, group_options, register_schema_and_domains, search_dirs
from .console import print_table
from .errors import TransferError, as_user_error
from .training.signals import Interrupted

USAGE = f"""usage: transfer <command> [arguments]

Cross-domain transfer-learning experiments, composed from Hydra config groups (transfer {__version__}).

commands:
  run [overrides]   train and evaluate one run, e.g. `transfer run strategy=dann target=movies`;
                    a sweep with -m; Hydra's flags work: --cfg job, --info, -c, --help
  list              the options of every config group, with their descriptions
  data list         which domains have their data in the data root
  data download X   fetch real data: amazon (the Blitzer archive), or a hub domain (movies, ...)
  analyze RUN...    proxy A-distance and t-SNE of source vs target features, before and after training
                    (runs saved with train.save_model=true)
  report PATH...    aggregate run and multirun folders: mean ± std over seeds, deltas against source_only
                    and the oracle, negative transfer, label-free selection gaps, failed runs; writes
                    report.md, report.csv, runs.csv, selection.csv and figures
  ensemble RUN... --out DIR
                    average the class probabilities of runs on one target test split (run folders,
                    or a multirun folder's completed runs) into a run folder that `report` lists
  export RUN --out DIR
                    the run's adapted classifier as a Hugging Face folder (safetensors, config with
                    id2label, tokenizer, model card); runs saved with train.save_model=true
  predict MODEL --input FILE|-
                    label texts from CSV, JSONL, Parquet or text lines with a run or exported model;
                    probabilities as CSV/JSONL, accuracy with --label-column
  serve MODEL       an HTTP service: POST /predict, GET /health, GET /metrics (Prometheus); micro-batched,
                    bearer-token auth, size limits

options:
  -h, --help        show this help
  --version         print the version

Start offline with `transfer run experiment=demo`; sweep the Blitzer pairs with
`transfer run -m experiment=amazon12` (run it again to resume)."""

# Hydra flags that take a value: their value is not an override.
_VALUE_FLAGS = {"--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd", "--package", "-p",
                "--info", "-i", "--cfg", "-c", "--shell-completion", "-sc", "--experimental-rerun"}


def debugging() -> bool:
    return os.environ.get("HYDRA_FULL_ERROR") == "1" or os.environ.get("TRANSFER_DEBUG") == "1"


# The Hydra plugins of the `sweeps` extra, by the config they provide.
SWEEP_PLUGINS = {"hydra/launcher/joblib", "hydra/launcher/submitit_local", "hydra/launcher/submitit_slurm",
                 "hydra/sweeper/optuna"}


def missing_plugin(config: str, chosen: Optional[str] = None) -> Optional[str]:
    """The fix when `chosen` (a config such as hydra/launcher/local, or `config` itself) needs a plugin's config
    that is not installed."""
    if config not in SWEEP_PLUGINS:
        return None
    group, _, name = (chosen or config).rpartition("/")
    return (f"{group}={name} needs a Hydra plugin that is not installed; install the sweep plugins with "
            f'pip install ".[sweeps]" in the transfer checkout')


def one_line(error: BaseException) -> str:
    """A Hydra/OmegaConf/transfer error as one line: its first line, and the first line of its cause."""
    from hydra.errors import MissingConfigException

    if isinstance(error, MissingConfigException) and error.options and error.missing_cfg_file:
        group, _, name = str(error.missing_cfg_file).rpartition("/")
        return missing_plugin(error.missing_cfg_file) or (
            f"unknown {group or 'config'} '{name}'; choose one of: {', '.join(error.options)} (see `transfer list`)")
    first = lambda e: str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__  # noqa: E731
    loading = re.match(r"In '([\w/]+)': Could not load '([\w/]+)'", first(error))  # e.g. local's joblib default
    plugin = loading and missing_plugin(loading.group(2), loading.group(1))
    if plugin:
        return plugin
    unknown_key = re.match(r"Could not override '([\w.]+)'", first(error))
    if unknown_key:
        return f"unknown config key '{unknown_key.group(1)}'; {known_keys(unknown_key.group(1))}"
    import yaml

    if isinstance(error, yaml.MarkedYAMLError) and error.problem_mark is not None:
        mark = error.problem_mark
        return (f"YAML syntax error in {mark.name}, line {mark.line + 1}: "
                f"{', '.join(filter(None, (error.context, error.problem)))}; fix the file")
    parts = [first(error)]
    cause = error.__cause__ or error.__context__
    if cause is not None and not isinstance(error, TransferError) and first(cause) not in parts[0]:
        parts.append(first(cause))
    key = re.search(r"full_key: ([\w.]+)", str(error))  # where in the config a composition error lies
    return ": ".join(parts) + (f" (key {key.group(1)})" if key and key.group(1) not in parts[0] else "")


def known_keys(key: str) -> str:
    """The keys allowed beside a mistyped one, from the schema."""
    import typing
    from dataclasses import fields, is_dataclass

    from .config import RunConfig

    node, parent = RunConfig, key.split(".")[:-1]
    for part in parent:
        node = typing.get_type_hints(node).get(part) if is_dataclass(node) else None
    if parent == ["strategy"]:
        return "`transfer run strategy=NAME --cfg job` shows a strategy's parameters"
    if typing.get_origin(node) is dict:  # free-form, such as peft.options: a new key needs a '+'
        return f"to add it, write +{key}=VALUE; `transfer run --cfg job` shows every key"
    if not is_dataclass(node):
        return "`transfer run --cfg job` shows every key"
    return f"{'.'.join(parent) or 'the config'} has: {', '.join(f.name for f in fields(node))}"


def report_errors(func):
    """Replaces Hydra's error reporter: one line, exit 2, unless debugging."""
    try:
        return func()
    except BrokenPipeError:
        raise  # handled in main()
    except Exception as error:  # noqa: BLE001 - this is the top-level reporter
        if debugging():
            raise
        error = as_user_error(error) or error
        user_error = isinstance(error, TransferError) or type(error).__module__.split(".")[0] in ("hydra", "omegaconf", "yaml")
        hint = "" if user_error else " (a bug? rerun with TRANSFER_DEBUG=1 for the traceback and report it)"
        print(f"transfer: error: {one_line(error)}{hint}", file=sys.stderr)
        sys.exit(TransferError.exit_code if user_error else 1)


class _WithoutHydraJobError:
    """stderr without Hydra's "Error executing job with overrides" line: our one-line report replaces it."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text: str) -> int:
        if text.startswith("Error executing job with overrides:"):
            return len(text)
        return self._stream.write(text)

    def __getattr__(self, name):
        return getattr(self._stream, name)


def _overrides(args: List[str]) -> Iterable[str]:
    skip = False
    for arg in args:
        if skip:
            skip = False
        elif arg in _VALUE_FLAGS:
            skip = True
        elif "=" in arg and not arg.startswith("-"):
            yield arg


def check_choices(args: List[str], dirs) -> None:
    """Unknown group options fail here, in one line that lists the valid ones."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import Glob

    try:
        parsed = OverridesParser.create().parse_overrides(list(_overrides(args)))
    except Exception as e:  # noqa: BLE001 - Hydra raises its own parse errors
        raise TransferError(f"cannot parse the overrides: {one_line(e)}") from None
    for override in parsed:
        group = override.key_or_group
        if group not in GROUPS or override.is_delete() or isinstance(override.value(), Glob):
            continue  # a glob(...) sweep only selects among existing options
        options = group_options(group, dirs)
        value = override.value()
        values = getattr(value, "list", None) or (value if isinstance(value, list) else [value])
        flat = [v for item in values for v in (item if isinstance(item, list) else [item])]
        for name in flat:
            if name is not None and str(name) not in options:
                raise TransferError(missing_plugin(f"{group}/{name}") or
                                    f"unknown {group} '{name}'; choose one of: {', '.join(options)} (see `transfer list`)")


def run(args: List[str]) -> None:
    import hydra
    import hydra._internal.utils as hydra_utils

    from .app import run as run_job
    from .config import CONFIG_DIR

    dirs = search_dirs(args)
    register_schema_and_domains(dirs)
    if "--help" not in args and "-h" not in args and "--hydra-help" not in args:
        report_errors(lambda: check_choices(args, dirs))
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        args = one_folder_for_all_processes(args)
    hydra_utils.run_and_report = report_errors  # Hydra looks this name up at call time
    if not debugging():
        sys.stderr = _WithoutHydraJobError(sys.stderr)
    sys.argv = ["transfer", *args]
    hydra.main(config_path=str(CONFIG_DIR), config_name="config", version_base="1.3")(run_job)()


def one_folder_for_all_processes(args: List[str]) -> List[str]:
    """Under torchrun or `accelerate launch`, every process runs this command: they agree on rank 0's run (or sweep)
    folder, and only rank 0 writes Hydra's files and log there."""
    from datetime import datetime

    import torch
    from accelerate import PartialState
    from accelerate.utils import broadcast_object_list

    # the process group starts here, so say which kind: gloo on CPUs (Accelerate's default would be none at all)
    cpu = not torch.cuda.is_available() or any(a.startswith(("hardware=cpu", "hardware.device=cpu")) for a in args)
    state = PartialState(cpu=cpu)
    stamp = [datetime.now().strftime("%Y-%m-%d/%H-%M-%S_%f")]
    broadcast_object_list(stamp, from_process=0)
    extra = []
    if not any(a.startswith("hydra.run.dir=") for a in args):
        extra.append(f"hydra.run.dir=${{paths.output_dir}}/{stamp[0]}")
    if not any(a.startswith("hydra.sweep.dir=") for a in args):
        extra.append(f"hydra.sweep.dir=${{paths.output_dir}}/multirun/{stamp[0]}")
    if not state.is_main_process:
        extra += ["hydra.output_subdir=null", "hydra/job_logging=disabled", "hydra/hydra_logging=disabled"]
    return [*args, *extra]


def list_options(args: List[str]) -> None:
    from rich.console import Console
    from rich.table import Table

    dirs = search_dirs(args)
    console = Console()
    for group in GROUPS:
        if group == "target":
            continue
        title = "source / target (domains)" if group in DOMAIN_ROLES else group
        table = Table(title=title, title_justify="left", show_header=False, box=None, padding=(0, 2))
        table.add_column(style="bold cyan")
        table.add_column()
        for name, path in group_options(group, dirs).items():
            table.add_row(name, describe(path))
        print_table(table, console)
        console.print()


def main(argv: Optional[List[str]] = None) -> None:
    try:
        dispatch(sys.argv[1:] if argv is None else list(argv))
    except BrokenPipeError:  # output piped into `head` and the like: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)
    except Interrupted as stopped:  # a signal: the run's status.json says what happened, its checkpoint resumes it
        if debugging():
            raise
        resume = "; run the same command again to resume" if stopped.checkpointed else ""
        print(f"transfer: interrupted by {stopped}{resume}", file=sys.stderr)
        sys.exit(stopped.exit_code)
    except KeyboardInterrupt:  # Ctrl-C outside a run
        if debugging():
            raise
        print("transfer: interrupted", file=sys.stderr)
        sys.exit(130)


SUBCOMMANDS = {"data": ".data.download", "analyze": ".analyze", "report": ".report", "ensemble": ".ensemble",
               "export": ".deploy.export", "predict": ".deploy.predict", "serve": ".deploy.serve"}


def dispatch(argv: List[str]) -> None:
    command, rest = (argv[0], argv[1:]) if argv else ("--help", [])
    if command in ("-h", "--help", "help"):
        print(USAGE)
    elif command in ("--version", "-V", "version"):
        print(f"transfer {__version__}")
    elif command == "run":
        run(rest)
    elif command in ("-sc", "--shell-completion"):
        # Hydra's completion script calls `transfer -sc query=bash` with the whole line in COMP_LINE.
        os.environ["COMP_LINE"] = re.sub(r"^(\s*\S+)\s+run\b", r"\1", os.environ.get("COMP_LINE", ""))
        run(argv)
    elif command == "list":
        list_options(rest)
    elif command in SUBCOMMANDS:  # argparse commands, imported on use
        entry = importlib.import_module(SUBCOMMANDS[command], __package__).main
        report_errors(lambda: entry(rest))
    else:
        print(f"transfer: error: unknown command '{command}'; choose one of: run, list, {', '.join(SUBCOMMANDS)} "
              "(see `transfer --help`)", file=sys.stderr)
        sys.exit(TransferError.exit_code)


if __name__ == "__main__":
    main()
