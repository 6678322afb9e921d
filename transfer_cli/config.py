"""The config schema, and where the config groups live.

Domains are defined once, in `configs/domain/NAME.yaml`. The `source` and `target` groups are generated from them
as ConfigStore stubs (`defaults: [/domain/NAME@NAME]`), so a new domain, packaged or in a user's `--config-dir`,
is one YAML file, and `source=books`, `source=[books,dvd]` and `target=movies` compose to `source.books.*` etc.
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Dict, List, Optional

import yaml
from hydra.core.config_store import ConfigStore



def _config_dir() -> Path:
    """Installed: the package transfer_cli.configs (the repo's configs/ folder, mapped in pyproject.toml).
    Imported straight from a source checkout: the configs/ folder beside the package."""
    try:
        spec = importlib.util.find_spec("transfer_cli.configs")
    except ModuleNotFoundError:
        spec = None
    if spec is not None and spec.submodule_search_locations:
        return Path(list(spec.submodule_search_locations)[0])
    return Path(__file__).resolve().parents[1] / "configs"


CONFIG_DIR = _config_dir()
GROUPS = ("model", "source", "target", "strategy", "peft", "hardware", "experiment")
DOMAIN_ROLES = ("source", "target")


class Loader(str, Enum):
    blitzer = "blitzer"
    files = "files"
    hub = "hub"
    synthetic = "synthetic"


class Pooling(str, Enum):
    cls = "cls"
    mean = "mean"


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"
    mps = "mps"


class Precision(str, Enum):
    auto = "auto"
    bf16 = "bf16"
    fp16 = "fp16"
    fp32 = "fp32"


class Selection(str, Enum):
    """The label-free validators (transfer_cli/training/validators.py)."""

    source_val = "source_val"
    entropy = "entropy"
    snd = "snd"
    dev = "dev"


class Logger(str, Enum):
    """Experiment trackers, through Accelerate's tracking API (transfer_cli/training/tracking.py)."""

    none = "none"
    tensorboard = "tensorboard"
    mlflow = "mlflow"
    csv = "csv"


class Protocol(str, Enum):
    inductive = "inductive"
    transductive = "transductive"


@dataclass
class LocalCopy:
    """A file under the data root that a hub domain prefers when it is present."""

    path: str = "???"
    text_column: str = "text"
    label_column: str = "label"


@dataclass
class DomainConfig:
    name: str = "???"
    description: str = ""
    loader: Loader = Loader.files
    path: Optional[str] = None  # relative to paths.data_dir unless absolute
    format: Optional[str] = None  # csv | json | jsonl | parquet; default from the file suffix
    text_column: str = "text"
    label_column: str = "label"
    label_map: Optional[Dict[Any, int]] = None  # raw label -> class index; unmapped rows are dropped
    labels: List[str] = field(default_factory=lambda: ["negative", "positive"])
    # one natural-language description per label, for zero-shot classification (default: "This text is {label}.")
    label_descriptions: Optional[List[str]] = None
    hub_id: Optional[str] = None
    hub_config: Optional[str] = None
    hub_split: str = "train"
    local: Optional[LocalCopy] = None
    max_examples: Optional[int] = None  # a fixed, seed-independent subsample of big corpora
    strip_html: bool = False
    encoding: str = "utf-8"  # of a csv/json/jsonl file (a UTF-8 byte-order mark is fine)
    use_title: bool = True  # blitzer: prepend the review title to its text


@dataclass
class ModelConfig:
    name: str = "???"
    description: str = ""
    name_or_path: Optional[str] = None  # hub id or local folder
    package: Optional[str] = None  # a pip package that ships the model (its get_model_path()), tried first
    random_init: Optional[Dict[str, Any]] = None  # build a random-weight BERT of this shape (tests)
    pooling: Pooling = Pooling.mean
    dropout: float = 0.1
    freeze_embeddings: bool = False
    freeze_layers: int = 0  # the bottom n transformer layers never train
    gradual_unfreezing: bool = False  # ULMFiT: each epoch of a phase unfreezes one more layer, top down
    trust_remote_code: bool = False  # run the Python code a hub model ships (never by default; warned about)


class PeftMethod(str, Enum):
    none = "none"
    lora = "lora"
    ia3 = "ia3"
    prefix_tuning = "prefix_tuning"


@dataclass
class PeftConfig:
    """Parameter-efficient tuning through PEFT: the backbone is frozen and wrapped; any strategy can use it."""

    name: str = "none"
    description: str = ""
    method: PeftMethod = PeftMethod.none
    options: Dict[str, Any] = field(default_factory=dict)  # passed to PEFT's LoraConfig / IA3Config / ...


@dataclass
class HardwareConfig:
    name: str = "???"
    description: str = ""
    device: Device = Device.auto
    precision: Precision = Precision.auto
    threads: int = 0  # torch intra-op threads; 0 = all cores
    deterministic: bool = False
    processes: int = 1  # processes on this machine (gloo on CPUs, one GPU each); >1 launches them with torchrun


@dataclass
class DataConfig:
    max_length: int = 256
    source_val_fraction: float = 0.2
    target_test_fraction: float = 0.5
    max_source_train: Optional[int] = None
    max_source_val: Optional[int] = None
    max_target_pool: Optional[int] = None
    max_target_test: Optional[int] = None
    max_target_validation: Optional[int] = 1000  # unlabelled target examples the validators score every epoch
    # the seed of the splits (source train/val, target pool/test, the validators' pool subset); None = the run's seed.
    # Runs of several seeds with one split_seed share their test split and differ only in training (an ensemble's members)
    split_seed: Optional[int] = None


@dataclass
class TrainConfig:
    epochs: int = 2
    batch_size: int = 16
    eval_batch_size: int = 64
    lr: float = 5e-5
    head_lr: Optional[float] = None  # default: lr
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    grad_accum_steps: int = 1
    max_grad_norm: float = 1.0
    patience: int = 2  # epochs without improvement of the selection metric before stopping
    group_by_length: bool = True  # batches of similar length (less padding); false: plain random batches
    pair_by_length: bool = True  # a target batch drawn beside a source batch has comparable lengths
    save_model: bool = False
    keep_checkpoints: bool = False  # keep the run's checkpoint/ folder once it completes (default: pruned)


@dataclass
class PathsConfig:
    data_dir: str = "${oc.env:TRANSFER_DATA_DIR,data}"
    cache_dir: str = "${oc.env:TRANSFER_CACHE_DIR,'~/.cache/transfer'}"  # cached token ids
    output_dir: str = "${oc.env:TRANSFER_OUTPUT_DIR,outputs}"


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    source: Dict[str, DomainConfig] = field(default_factory=dict)
    target: Dict[str, DomainConfig] = field(default_factory=dict)
    strategy: Dict[str, Any] = field(default_factory=dict)  # each strategy validates its own parameters
    hardware: HardwareConfig = field(default_factory=HardwareConfig)
    peft: PeftConfig = field(default_factory=PeftConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    protocol: Protocol = Protocol.inductive
    selection: Selection = Selection.source_val  # the label-free validator that picks checkpoints
    seed: int = 0
    description: str = ""  # set by experiment presets
    # continue an interrupted run: auto = the latest unfinished run of this config under paths.output_dir, or a run
    # folder's path; null = only the run's own folder (a sweep job's, or hydra.run.dir set to the killed run's)
    resume: Optional[str] = None
    logger: Logger = Logger.none  # experiment tracking: none | tensorboard | mlflow | csv
    init_from: Optional[str] = None  # a run folder (saved model) or an exported folder to start from: transfer again


def search_dirs(argv: List[str]) -> List[Path]:
    """The packaged config folder plus the user's, from `--config-dir`/`-cd` and `hydra.searchpath=[...]`."""
    dirs = [CONFIG_DIR]
    for i, arg in enumerate(argv):
        if arg in ("--config-dir", "-cd") and i + 1 < len(argv):
            dirs.append(Path(argv[i + 1]))
        elif arg.startswith("--config-dir="):
            dirs.append(Path(arg.split("=", 1)[1]))
        elif arg.startswith("hydra.searchpath="):
            for entry in arg.split("=", 1)[1].strip("[]").split(","):
                entry = entry.strip().strip("'\"")
                if entry.startswith("file://"):
                    dirs.append(Path(entry[len("file://"):]))
                elif entry and "://" not in entry:
                    dirs.append(Path(entry))
    return [d.expanduser().resolve() for d in dirs]


def run_config_dirs() -> List[Path]:
    """The config folders of the running Hydra job (the packaged one plus the user's); outside a job, the packaged one."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return [CONFIG_DIR]
    dirs = []
    for source in HydraConfig.get().runtime.config_sources:
        if source.schema == "file":
            dirs.append(Path(source.path))
        elif source.schema == "pkg" and source.path.startswith("transfer_cli.configs"):
            dirs.append(CONFIG_DIR)
    return dirs or [CONFIG_DIR]


def group_options(group: str, dirs: List[Path]) -> Dict[str, Path]:
    """Option name -> YAML file of a config group, over all search dirs (later dirs do not shadow earlier)."""
    folder = "domain" if group in DOMAIN_ROLES else group
    options: Dict[str, Path] = {}
    for d in dirs:
        for f in sorted((d / folder).glob("*.yaml")):
            options.setdefault(f.stem, f)
    return dict(sorted(options.items()))


def load_option(path: Path, schema: type) -> Any:
    """One option's YAML file, checked against its schema dataclass (outside a Hydra composition)."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from .errors import TransferError

    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), yaml.safe_load(path.read_text()) or {}))
    except (OmegaConfBaseException, yaml.YAMLError) as e:
        raise TransferError(f"config {path} is invalid: {str(e).splitlines()[0]}") from None


def describe(path: Path) -> str:
    """The one-line `description:` of a config file."""
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError:
        return ""
    if not isinstance(data, dict):
        return ""
    nested = data.get(path.parent.name)  # a `# @package _global_` option keeps its group's keys one level down
    if "description" not in data and isinstance(nested, dict):
        data = nested
    return str(data.get("description", "")).strip()


FOLDER_KEYS = ("strategy", "source", "target", "seed", "model", "peft", "selection", "protocol", "hardware", "experiment")


def job_folder(overrides: List[str], swept: Optional[Dict[str, Any]] = None) -> str:
    """A sweep job's folder name, from the job's own overrides (`strategy=dann,source=books,target=dvd,seed=0`), so
    that running a sweep again finds the jobs it completed. The keys users sweep most come first, then those of the
    sweeper's `params`; characters unsafe in a file name become '_'; a name too long for a file system keeps its
    start and ends in a hash of the whole."""
    first = [*FOLDER_KEYS, *(swept or {})]

    def rank(override: str):
        key = override.split("=", 1)[0].lstrip("+~")
        return (first.index(key) if key in first else len(first), key)

    name = ",".join(sorted(overrides, key=rank))
    safe = re.sub(r"[^\w=,.+\-\[\]]", "_", name) or "defaults"
    if len(safe) > 150:
        safe = f"{safe[:120]}-{hashlib.sha256(name.encode()).hexdigest()[:16]}"
    return safe


def register_resolvers() -> None:
    from omegaconf import OmegaConf

    OmegaConf.register_new_resolver(
        "job_folder", lambda overrides, swept=None: job_folder(list(overrides), dict(swept or {})), replace=True
    )


def register_schema_and_domains(dirs: List[Path]) -> None:
    """Store the schema and one `source/NAME` and `target/NAME` stub per domain in Hydra's ConfigStore."""
    cs = ConfigStore.instance()
    cs.store(name="schema", node=RunConfig)
    for name in group_options("source", dirs):
        for role in DOMAIN_ROLES:
            cs.store(group=role, name=name, node={"defaults": [f"/domain/{name}@{name}"]})
