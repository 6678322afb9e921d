"""Regenerate the real-data slice the tests ship in `tests/data/` from a full data root.

    python scripts/make_test_data.py /path/to/DATA_ROOT            # writes tests/data/ (the default --out)
    python scripts/make_test_data.py ../shared/data --out /tmp/slice --n 50

Which reviews: the FIRST N (default 50) reviews of each file, in file order, byte for byte:

- `amazon-multi-domain/{books,dvd,electronics,kitchen}/{positive,negative}.review` (Blitzer et al. 2007): the
  first N `<review>` ... `</review>` blocks of each file, with the file's own `<reviews>` header and `</reviews>`
  footer. The files are not valid XML, so blocks are cut on their own lines (`<review>`, `</review>`) and copied as
  raw bytes: the same bare `&`, `<` and control characters the loader meets in the full data.
- `imdb-2k/imdb.csv` (Maas et al. 2011): the header line, then the first N rows labelled 1 and the first N labelled
  0, in file order, each row's raw bytes as in the file (a quoted review may span lines).

Deterministic: the same data root gives the same bytes. The slice is a few hundred KB; never copy the full data.
"""

from __future__ import annotations

import argparse
import csv
import io
import re
from pathlib import Path

DOMAINS = ("books", "dvd", "electronics", "kitchen")
LABELS = ("positive", "negative")
_BLOCK = re.compile(rb"^<review>\r?\n.*?^</review>\r?\n?", re.S | re.M)


def review_slice(raw: bytes, n: int) -> bytes:
    """The first `n` review blocks of a `.review` file, between the file's own header and footer."""
    blocks = list(_BLOCK.finditer(raw))
    if len(blocks) < n:
        raise SystemExit(f"only {len(blocks)} review blocks, {n} wanted")
    header, footer = raw[: blocks[0].start()], raw[blocks[-1].end():]
    return header + b"".join(m.group(0) for m in blocks[:n]) + footer


def csv_slice(raw: bytes, n: int, label_column: str = "labels") -> bytes:
    """The header and the first `n` rows of each label (1, then 0 counted separately; file order kept), raw bytes."""
    lines = raw.decode("utf-8").split("\n")  # not splitlines(): reviews hold U+0085, which it would split on
    lines = [line + "\n" for line in lines[:-1]] + ([lines[-1]] if lines[-1] else [])
    consumed: list[str] = []

    def feed():
        for line in lines:
            consumed.append(line)
            yield line

    reader = csv.reader(feed())
    header = next(reader)
    label = header.index(label_column)
    out, taken = ["".join(consumed)], {"1": 0, "0": 0}
    consumed.clear()
    for row in reader:
        record = "".join(consumed)
        consumed.clear()
        if taken.get(row[label], n) < n:
            taken[row[label]] += 1
            out.append(record)
        if all(count == n for count in taken.values()):
            break
    if any(count < n for count in taken.values()):
        raise SystemExit(f"only {taken} rows per label, {n} wanted")
    text = "".join(out)
    return (text if text.endswith("\n") else text + "\n").encode("utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data_root", type=Path, help="the full data root (amazon-multi-domain/, imdb-2k/)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "tests" / "data")
    parser.add_argument("--n", type=int, default=50, help="reviews per file and label (default 50)")
    args = parser.parse_args()
    total = 0
    for domain in DOMAINS:
        for label in LABELS:
            content = review_slice((args.data_root / "amazon-multi-domain" / domain / f"{label}.review").read_bytes(), args.n)
            target = args.out / "amazon-multi-domain" / domain / f"{label}.review"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
            total += len(content)
    content = csv_slice((args.data_root / "imdb-2k" / "imdb.csv").read_bytes(), args.n)
    (args.out / "imdb-2k").mkdir(parents=True, exist_ok=True)
    (args.out / "imdb-2k" / "imdb.csv").write_bytes(content)
    total += len(content)
    # a sanity check that the CSV slice parses as the loader reads it
    rows = list(csv.DictReader(io.StringIO(content.decode("utf-8"))))
    assert len(rows) == 2 * args.n, len(rows)
    print(f"wrote {total / 1024:.0f} KB to {args.out}")


if __name__ == "__main__":
    main()
