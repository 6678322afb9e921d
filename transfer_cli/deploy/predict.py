"""`transfer predict MODEL --input FILE|-`: label new texts with a run's or an exported model.

MODEL is a run folder saved with train.save_model=true, or a folder from `transfer export`. The input is CSV, JSONL,
Parquet or text lines (one text per line; `-` reads stdin), read in chunks, so memory stays flat whatever the file's
size. Within a chunk, texts are batched by length (no padding waste) and the outputs written in the input's order:
one row per text with the label, its probability and every class's probability, as CSV or JSONL (`--output`,
default JSONL on stdout). With `--label-column`, accuracy and macro-F1 are printed at the end, beside the throughput.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path
from typing import IO, Iterator, List, Optional

import numpy as np

from ..errors import TransferError
from ..outputs import model_folder

CHUNK = 4096  # texts read, sorted and predicted at a time
FORMATS = {".csv": "csv", ".tsv": "csv", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet", ".txt": "text"}


def input_format(path: str, given: Optional[str]) -> str:
    if given:
        return given
    if path == "-":
        return "text"
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise TransferError(f"cannot tell the format of {path} from its suffix; add --format csv|jsonl|parquet|text")
    return FORMATS[suffix]


def read_chunks(path: str, fmt: str, text_column: str, label_column: Optional[str]) -> Iterator[tuple]:
    """(texts, labels or None) per chunk of at most CHUNK rows, streamed from the file; a file that cannot be read
    as `fmt` is a one-line error."""
    try:
        yield from _chunks(path, fmt, text_column, label_column)
    except UnicodeDecodeError as e:
        raise TransferError(f"{path} is not UTF-8 text (byte {e.start}); convert it to UTF-8") from None
    except (ValueError, OSError) as e:  # pandas' and pyarrow's parse errors are ValueErrors
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TransferError(f"cannot read {path} as {fmt} ({reason}); check the file or --format") from None


def _chunks(path: str, fmt: str, text_column: str, label_column: Optional[str]) -> Iterator[tuple]:
    import pandas as pd

    if fmt == "text":
        stream = sys.stdin if path == "-" else open(path, encoding="utf-8")
        if label_column:
            raise TransferError("--label-column needs a CSV, JSONL or Parquet input (text lines carry no labels)")
        with stream:
            lines: List[str] = []
            for line in stream:
                lines.append(line.rstrip("\r\n"))
                if len(lines) == CHUNK:
                    yield lines, None
                    lines = []
            if lines:
                yield lines, None
        return
    if fmt == "parquet":
        import pyarrow.parquet as pq

        frames = (batch.to_pandas() for batch in pq.ParquetFile(path).iter_batches(batch_size=CHUNK))
    elif fmt == "csv":
        frames = pd.read_csv(path, chunksize=CHUNK, sep="\t" if path.endswith(".tsv") else ",", dtype=str,
                             keep_default_na=False)
    else:
        frames = pd.read_json(path, lines=True, chunksize=CHUNK, dtype=False)
    for frame in frames:
        for column in filter(None, (text_column, label_column)):
            if column not in frame:
                raise TransferError(f"{path} has no column '{column}'; its columns are: {', '.join(map(str, frame.columns))} "
                                    f"(choose with --text-column / --label-column)")
        texts = frame[text_column].fillna("").astype(str).tolist()
        yield texts, (frame[label_column].tolist() if label_column else None)


class Writer:
    """Rows out, as CSV or JSONL, to a file or stdout."""

    def __init__(self, stream: IO[str], fmt: str, labels: List[str]):
        self.stream, self.fmt, self.labels = stream, fmt, labels
        self.columns = ["label", "score", *(f"prob_{label}" for label in labels)]
        if fmt == "csv":
            self.csv = csv.writer(stream)
            self.csv.writerow(self.columns)

    def write(self, probabilities: np.ndarray) -> None:
        predicted = probabilities.argmax(1)
        for p, k in zip(probabilities, predicted):
            row = [self.labels[k], round(float(p[k]), 6), *(round(float(v), 6) for v in p)]
            if self.fmt == "csv":
                self.csv.writerow(row)
            else:
                self.stream.write(json.dumps(dict(zip(self.columns, row))) + "\n")


def label_ids(values: list, label2id: dict, start: int) -> np.ndarray:
    """Gold labels as class indices: label names, or the indices themselves."""
    out = []
    for row, value in enumerate(values, start=start + 1):
        key = str(value).strip()
        if key in label2id:
            out.append(label2id[key])
        elif key.lstrip("-").isdigit() and 0 <= int(key) < len(label2id):
            out.append(int(key))
        else:
            raise TransferError(f"row {row}: label '{value}' is none of {', '.join(label2id)} (or 0-{len(label2id) - 1})")
    return np.asarray(out)


def predict_file(model_path: Path, path: str, fmt: Optional[str], output: Optional[Path], text_column: str,
                 label_column: Optional[str], batch_size: int, progress: bool = True) -> dict:
    model_folder(model_path)  # the arguments are checked before torch and transformers load (seconds)
    fmt = input_format(path, fmt)
    if path != "-" and not Path(path).is_file():
        raise TransferError(f"no such input file: {path}")
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
    from sklearn.metrics import accuracy_score, f1_score

    from .runtime import Classifier

    classifier = Classifier(model_path)
    out_fmt = "csv" if output and output.suffix.lower() in (".csv", ".tsv") else "jsonl"
    if output:
        output.parent.mkdir(parents=True, exist_ok=True)
    staging = output.with_name(f".{output.name}.partial") if output else None
    stream = open(staging, "w", encoding="utf-8", newline="") if staging else sys.stdout
    writer = Writer(stream, out_fmt, classifier.labels)
    gold, predicted, count, started = [], [], 0, time.perf_counter()
    columns = [SpinnerColumn(), TextColumn("predict: {task.completed} texts"), TimeElapsedColumn()]
    try:
        with Progress(*columns, disable=not progress, console=Console(stderr=True)) as bar:
            task = bar.add_task("predict", total=None)
            for texts, gold_labels in read_chunks(path, fmt, text_column, label_column):
                probabilities, _ = classifier.predict(classifier.tokenize(texts), batch_size)
                writer.write(probabilities)
                if gold_labels is not None:
                    gold.append(label_ids(gold_labels, classifier.label2id, count))
                    predicted.append(probabilities.argmax(1))
                count += len(texts)
                bar.update(task, advance=len(texts))
        if staging:
            stream.close()
            staging.replace(output)
    except BaseException:
        if staging:
            stream.close()
            staging.unlink(missing_ok=True)
        raise
    seconds = time.perf_counter() - started
    summary = {"texts": count, "seconds": round(seconds, 3), "texts_per_second": round(count / max(seconds, 1e-9), 1),
               "runtime": classifier.device}
    if gold:
        y, p = np.concatenate(gold), np.concatenate(predicted)
        summary.update(accuracy=float(accuracy_score(y, p)), f1_macro=float(f1_score(y, p, average="macro")))
    return summary


def main(argv: List[str]) -> None:
    parser = argparse.ArgumentParser(prog="transfer predict", description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="a run folder (saved with train.save_model=true) or an exported folder")
    parser.add_argument("--input", required=True, help="CSV, JSONL, Parquet or text file; - for text lines on stdin")
    parser.add_argument("--output", type=Path, help="where to write the predictions (.csv or .jsonl; default: stdout)")
    parser.add_argument("--format", choices=["csv", "jsonl", "parquet", "text"], help="the input's format (default: from its suffix)")
    parser.add_argument("--text-column", default="text", help="(default: %(default)s)")
    parser.add_argument("--label-column", help="gold labels: print accuracy and macro-F1")
    parser.add_argument("--batch-size", type=int, default=64, help="(default: %(default)s)")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        raise TransferError(f"--batch-size={args.batch_size} must be >= 1")
    summary = predict_file(args.model, args.input, args.format, args.output, args.text_column, args.label_column,
                           args.batch_size, progress=sys.stderr.isatty())
    parts = [f"{summary['texts']} texts in {summary['seconds']:.1f} s ({summary['texts_per_second']:.0f} texts/s on "
             f"{summary['runtime']})"]
    if "accuracy" in summary:
        parts.append(f"accuracy {summary['accuracy']:.4f}, macro-F1 {summary['f1_macro']:.4f}")
    print("predict: " + "; ".join(parts) + (f"; wrote {args.output}" if args.output else ""), file=sys.stderr)
