"""Domain loaders: each turns a domain config into labelled texts (`Examples`).

- blitzer: the pseudo-XML `.review` files of Blitzer et al. (2007); not valid XML, so parsed with regexes.
- files: csv, json, jsonl or parquet, with configurable columns and label mapping.
- hub: any Hugging Face `datasets` id, preferring a local copy under the data root: the one the domain names, else
  the one `transfer data download NAME` saved.
- synthetic: the embedded offline demo (`transfer_cli.data.synthetic`).
"""

from __future__ import annotations

import html
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional

import numpy as np
import pandas as pd

from ..config import Loader
from ..errors import TransferError

log = logging.getLogger("transfer")
NO_DATA_HINT = (
    "set TRANSFER_DATA_DIR or paths.data_dir to the folder that holds it "
    "(the Blitzer set: cs.jhu.edu/~mdredze/datasets/sentiment/), or run `transfer run experiment=demo`, which is offline"
)
FORMATS = {".csv": "csv", ".json": "json", ".jsonl": "jsonl", ".parquet": "parquet"}
MAX_TEXT_CHARS = 1_000_000  # a longer "text" is a broken file (an unclosed quote swallows the rows after it)


@dataclass
class Examples:
    """Labelled texts of one domain; `labels` are class indices."""

    domain: str
    texts: List[str]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.texts)


def load_domain(domain: Any, data_dir: Path) -> Examples:
    """Load and check one domain (a `DomainConfig` node)."""
    loaders = {"blitzer": _load_blitzer, "files": _load_files, "hub": _load_hub, "synthetic": _load_synthetic}
    texts, raw_labels = loaders[Loader(domain.loader).value](domain, data_dir)
    labels = _map_labels(domain, raw_labels)
    keep = labels >= 0
    texts = [t for t, k in zip(texts, keep) if k]
    labels = labels[keep]
    if domain.max_examples and len(texts) > domain.max_examples:
        # A fixed subsample (independent of the run seed) so the domain's content, and its cache key, is stable.
        index = np.sort(np.random.default_rng(0).permutation(len(texts))[: domain.max_examples])
        texts, labels = [texts[i] for i in index], labels[index]
    if not texts:
        raise TransferError(f"domain '{domain.name}' is empty: no labelled texts were found; check its path and label_map")
    if len(np.unique(labels)) < 2:
        raise TransferError(
            f"domain '{domain.name}' has a single class ({domain.labels[int(labels[0])]}); "
            "transfer needs every class present: check its label column and label_map"
        )
    return Examples(domain.name, texts, labels)


def _resolve(path: str, data_dir: Path) -> Path:
    """An absolute path as given; a relative one inside the data root: `..` that climbs out of it is an error, and a
    symlink that leads out of it is reported (linking a big data set into the root is common, so it is allowed)."""
    p = Path(path).expanduser()
    if p.is_absolute():
        return p
    joined = data_dir / p
    if not Path(os.path.normpath(joined)).is_relative_to(os.path.normpath(data_dir)):
        raise TransferError(f"the relative path '{path}' climbs out of the data root {data_dir}; give an absolute "
                            "path, or one inside the data root")
    if joined.exists() and not joined.resolve().is_relative_to(data_dir.resolve()):
        log.warning("'%s' leads out of the data root %s through a symlink, to %s", path, data_dir, joined.resolve())
    return joined


def _require(path: Path, domain: Any) -> Path:
    if not path.exists():
        hint = NO_DATA_HINT if Loader(domain.loader) == Loader.blitzer else (
            "check the path in the domain's YAML (a relative one starts at TRANSFER_DATA_DIR or paths.data_dir)")
        raise TransferError(f"data for domain '{domain.name}' not found at {path.resolve()}: {hint}")
    return path


def _map_labels(domain: Any, raw: List[Any]) -> np.ndarray:
    """Class indices; -1 marks rows the label_map leaves out (e.g. 3-star reviews)."""
    if domain.label_map:
        mapping = {str(k): int(v) for k, v in domain.label_map.items()}
        bad = sorted(v for v in set(mapping.values()) if not 0 <= v < len(domain.labels))
        if bad:
            raise TransferError(
                f"domain '{domain.name}': label_map maps to {bad}, but the classes are 0..{len(domain.labels) - 1} "
                f"({list(domain.labels)}); fix the label_map or the labels list"
            )
        return np.array([mapping.get(str(_plain(r)), -1) for r in raw], dtype=np.int64)
    names = {name: i for i, name in enumerate(domain.labels)}
    out = []
    for row, r in enumerate(raw, 1):
        r = _plain(r)
        if isinstance(r, str) and r in names:
            out.append(names[r])
            continue
        try:
            value = int(r)
        except (TypeError, ValueError):
            raise TransferError(
                f"domain '{domain.name}': label {r!r} (row {row}) is neither a class index nor one of {list(domain.labels)}; "
                "add a label_map to the domain"
            ) from None
        if not 0 <= value < len(domain.labels):
            raise TransferError(
                f"domain '{domain.name}': label {value} (row {row}) is out of range for {len(domain.labels)} classes; "
                "add a label_map (for example star ratings -> 0/1) to the domain"
            )
        out.append(value)
    return np.array(out, dtype=np.int64)


def _plain(value: Any) -> Any:
    """numpy/pandas scalars -> Python, and 4.0 -> 4, so that label_map keys match."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return value


def _clean(text: str, strip_html: bool) -> str:
    if strip_html:
        text = html.unescape(re.sub(r"<br\s*/?>|<[^>]+>", " ", text))
    return " ".join(text.split())


# --- blitzer ---------------------------------------------------------------------------------------------------

_REVIEW = re.compile(r"<review>(.*?)</review>", re.S)
_FIELD = re.compile(r"<(title|review_text)>(.*?)</\1>", re.S)
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def parse_blitzer(path: Path, use_title: bool = True) -> List[str]:
    """Texts of one `.review` file. The title is prepended as its own sentence, since it often carries the verdict."""
    raw = _CONTROL.sub(" ", path.read_text(encoding="utf-8", errors="replace"))
    texts = []
    for block in _REVIEW.findall(raw):
        fields = {k: " ".join(v.split()) for k, v in _FIELD.findall(block)}
        body, title = fields.get("review_text", ""), fields.get("title", "")
        if use_title and title:
            body = f"{title}{'' if title[-1] in '.!?' else '.'} {body}"
        if body:
            texts.append(body)
    return texts


def _load_blitzer(domain: Any, data_dir: Path):
    folder = _require(_resolve(domain.path or domain.name, data_dir), domain)
    texts: List[str] = []
    labels: List[str] = []
    for label in ("negative", "positive"):
        file = _require(folder / f"{label}.review", domain)
        parsed = parse_blitzer(file, domain.use_title)
        texts += parsed
        labels += [label] * len(parsed)
    return texts, labels


# --- files ------------------------------------------------------------------------------------------------------


def read_table(path: Path, fmt: Optional[str] = None, encoding: str = "utf-8") -> pd.DataFrame:
    """A data file as a frame, or one line that says what is wrong with the file and how to fix it."""
    fmt = fmt or FORMATS.get(path.suffix.lower())
    if fmt not in ("csv", "json", "jsonl", "parquet"):
        raise TransferError(f"cannot read {path}: unknown format; set the domain's format to one of "
                            "['csv', 'json', 'jsonl', 'parquet']")
    if path.stat().st_size == 0:
        raise TransferError(f"{path} is empty (0 bytes); point the domain at the file that holds its data")
    if fmt == "parquet":
        try:
            return pd.read_parquet(path)
        except (ValueError, OSError) as e:
            raise TransferError(f"cannot read {path} as parquet: {str(e).splitlines()[0]}") from None
    with open(path, "rb") as f:
        head = f.read(8192)
    if encoding.lower().replace("-", "").replace("_", "") in ("utf8", "utf8sig"):
        encoding = "utf-8-sig"  # a UTF-8 byte-order mark (Excel writes one) is read past
        if head[:2] in (b"\xff\xfe", b"\xfe\xff"):
            raise TransferError(f"{path} is UTF-16 (it starts with a UTF-16 byte-order mark); save it as UTF-8, or "
                                "set encoding: utf-16 in the domain's YAML")
        if b"\x00" in head:
            raise TransferError(f"{path} is a binary file, not {fmt} text; check the domain's path and format")
    try:
        if fmt == "csv":
            return pd.read_csv(path, encoding=encoding)
        return pd.read_json(path, lines=fmt == "jsonl", encoding=encoding)
    except UnicodeDecodeError as e:
        raise TransferError(f"{path} is not {encoding.replace('-sig', '')} text (byte 0x{e.object[e.start]:02x} at "
                            f"offset {e.start}); save it as UTF-8, or set the domain's encoding (e.g. encoding: "
                            "latin-1)") from None
    except (ValueError, OSError) as e:
        where = _bad_json_line(path, encoding) if fmt == "jsonl" else ""
        raise TransferError(f"cannot read {path} as {fmt}: {where or str(e).splitlines()[0]}") from None


def _bad_json_line(path: Path, encoding: str) -> str:
    import json

    with open(path, encoding=encoding) as f:
        for number, line in enumerate(f, 1):
            try:
                line.strip() and json.loads(line)
            except ValueError as e:
                return f"line {number} is not valid JSON ({str(e).split(':')[0]}); fix or remove it"
    return ""


def _columns(frame: pd.DataFrame, text_column: str, label_column: str, where: str, domain: Any):
    """The texts and raw labels of a frame. A row with no label or no text, or an impossibly long text, is an error
    that names its row (1 = the first data row): a silent drop would change the data a run reports on."""
    missing = [c for c in (text_column, label_column) if c not in frame.columns]
    if missing:
        raise TransferError(
            f"domain '{domain.name}': column(s) {missing} not in {where} (it has {list(frame.columns)}); "
            "set text_column / label_column in the domain's YAML"
        )
    raw_texts, raw_labels = frame[text_column], frame[label_column]
    problems = [
        (raw_labels.isna() | (raw_labels.astype(str).str.strip() == ""), "has no label"),
        (raw_texts.isna() | (raw_texts.astype(str).str.strip() == ""), "has an empty text"),
        (raw_texts.astype(str).str.len() > MAX_TEXT_CHARS,
         f"has a text over {MAX_TEXT_CHARS:,} characters (an unclosed quote?)"),
    ]
    for bad, what in problems:
        rows = np.flatnonzero(bad.to_numpy())
        if len(rows):
            more = f" (and {len(rows) - 1} more rows)" if len(rows) > 1 else ""
            raise TransferError(f"domain '{domain.name}': row {rows[0] + 1} of {where} {what}{more}; fix or remove it")
    texts = [_clean(str(t), domain.strip_html) for t in raw_texts]
    return texts, list(raw_labels)


def _load_files(domain: Any, data_dir: Path):
    if not domain.path:
        raise TransferError(f"domain '{domain.name}' uses the files loader but sets no path")
    path = _require(_resolve(domain.path, data_dir), domain)
    return _columns(read_table(path, domain.format, domain.encoding), domain.text_column, domain.label_column, str(path), domain)


# --- hub --------------------------------------------------------------------------------------------------------


def hub_copy(data_dir: Path, name: str) -> Path:
    """Where `transfer data download NAME` saves a hub domain (the hub loader looks here first)."""
    return data_dir / "hub" / f"{name}.parquet"


def _load_hub(domain: Any, data_dir: Path):
    """A local copy first: the domain's own (`local`), then one saved by `transfer data download NAME`."""
    if domain.local is not None:
        local = _resolve(domain.local.path, data_dir)
        if local.exists():
            frame = read_table(local)
            return _columns(frame, domain.local.text_column, domain.local.label_column, str(local), domain)
    saved = hub_copy(data_dir, domain.name)
    if saved.exists():
        return _columns(read_table(saved), domain.text_column, domain.label_column, str(saved), domain)
    try:
        import datasets

        data = datasets.load_dataset(domain.hub_id, domain.hub_config, split=domain.hub_split)
    except Exception as e:  # network, auth, missing id: all end in the same advice
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        local_hint = f" or put a copy at {_resolve(domain.local.path, data_dir)}" if domain.local else ""
        raise TransferError(
            f"could not load '{domain.hub_id}' for domain '{domain.name}' from the Hugging Face Hub ({reason}); "
            f"if you are offline, point a files domain at a local csv/json/parquet copy{local_hint}"
        ) from None
    frame = data.to_pandas()
    return _columns(frame, domain.text_column, domain.label_column, f"hub dataset {domain.hub_id}", domain)


# --- synthetic --------------------------------------------------------------------------------------------------


def _load_synthetic(domain: Any, data_dir: Path):
    from .synthetic import generate

    return generate(domain.name, domain.max_examples or 1000)
