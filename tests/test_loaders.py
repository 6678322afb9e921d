"""Domain loaders on the real files (the shipped slice; the full data with -m full_data), on user files, and the
generated demo domains."""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from transfer_cli.config import DomainConfig, LocalCopy
from transfer_cli.data import synthetic
from transfer_cli.data.loaders import load_domain, parse_blitzer
from transfer_cli.errors import TransferError

from .conftest import REPO

CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
BLITZER = ["books", "dvd", "electronics", "kitchen"]


def check_blitzer(root, name, per_label):
    ex = load_domain(DomainConfig(name=name, loader="blitzer", path=f"amazon-multi-domain/{name}"), root)
    assert len(ex) == 2 * per_label
    assert np.bincount(ex.labels).tolist() == [per_label, per_label]
    assert all(t.strip() for t in ex.texts)
    assert not any(CONTROL.search(t) for t in ex.texts)  # the slice's dvd/positive.review holds a \x1a
    assert not any("<review_text>" in t or "</title>" in t for t in ex.texts)


@pytest.mark.parametrize("name", BLITZER)
def test_blitzer_real_files(data_dir, name):
    check_blitzer(data_dir, name, 50)


@pytest.mark.full_data
@pytest.mark.parametrize("name", BLITZER)
def test_blitzer_full_files(full_data_dir, name):
    check_blitzer(full_data_dir, name, 1000)


def test_blitzer_title_is_prepended(data_dir):
    path = data_dir / "amazon-multi-domain/books/positive.review"
    with_title, without = parse_blitzer(path, True), parse_blitzer(path, False)
    assert with_title[0].startswith("One of the best Crichton novels. Sphere by Michael Crichton")
    assert without[0].startswith("Sphere by Michael Crichton")


def test_blitzer_survives_invalid_xml(tmp_path):
    folder = tmp_path / "toys"
    folder.mkdir()
    block = "<review>\n<title>\nA & B <3\n</title>\n<review_text>\nFun\x07 toy & more <grin>\n</review_text>\n</review>\n"
    (folder / "positive.review").write_text(block * 2)
    (folder / "negative.review").write_text(block.replace("Fun", "Broken"))
    ex = load_domain(DomainConfig(name="toys", loader="blitzer", path=str(folder)), tmp_path)
    assert ex.texts[0] == "A & B <3. Broken toy & more <grin>"
    assert ex.labels.tolist() == [0, 1, 1]


def check_movies(root, per_label):
    domain = DomainConfig(name="movies", loader="hub", hub_id="stanfordnlp/imdb", strip_html=True, max_examples=2000,
                          local=LocalCopy(path="imdb-2k/imdb.csv", text_column="reviews", label_column="labels"))
    assert "<br" in (root / "imdb-2k/imdb.csv").read_text()
    ex = load_domain(domain, root)
    assert len(ex) == 2 * per_label and np.bincount(ex.labels).tolist() == [per_label, per_label]
    assert not any("<br" in t for t in ex.texts)


def test_movies_prefers_local_copy(data_dir):
    check_movies(data_dir, 50)


@pytest.mark.full_data
def test_movies_full_local_copy(full_data_dir):
    check_movies(full_data_dir, 1000)


@pytest.mark.full_data
def test_shipped_slice_is_the_scripts_output(full_data_dir, data_dir, tmp_path):
    """tests/data is exactly what scripts/make_test_data.py cuts from the full data: byte for byte."""
    subprocess.run([sys.executable, str(REPO / "scripts" / "make_test_data.py"), str(full_data_dir), "--out",
                    str(tmp_path)], check=True, capture_output=True)
    made = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    shipped = sorted(p.relative_to(data_dir) for p in data_dir.rglob("*") if p.is_file() and p.name != "README.md")
    assert made == shipped
    for path in made:
        assert (tmp_path / path).read_bytes() == (data_dir / path).read_bytes(), path


@pytest.mark.parametrize("fmt", ["csv", "json", "jsonl", "parquet"])
def test_files_loader_formats_and_label_map(tmp_path, fmt):
    frame = pd.DataFrame({"body": ["great", "bad", "meh", "superb", "awful"], "stars": [5, 1, 3, 4, 2]})
    path = tmp_path / f"reviews.{fmt}"
    {"csv": lambda: frame.to_csv(path, index=False), "json": lambda: frame.to_json(path, orient="records"),
     "jsonl": lambda: frame.to_json(path, orient="records", lines=True),
     "parquet": lambda: frame.to_parquet(path)}[fmt]()
    domain = DomainConfig(name="mine", loader="files", path=str(path), text_column="body", label_column="stars",
                          label_map={1: 0, 2: 0, 4: 1, 5: 1})
    ex = load_domain(domain, tmp_path)
    assert ex.texts == ["great", "bad", "superb", "awful"]  # 3 stars is unmapped, so dropped
    assert ex.labels.tolist() == [1, 0, 1, 0]


def test_files_loader_label_names(tmp_path):
    (tmp_path / "r.csv").write_text("text,label\ngood,positive\nbad,negative\n")
    ex = load_domain(DomainConfig(name="r", loader="files", path="r.csv"), tmp_path)
    assert ex.labels.tolist() == [1, 0]


@pytest.mark.parametrize(
    "content, match",
    [
        ("review,label\ngood,1\nbad,0\n", r"column\(s\) \['text'\] not in"),
        ("text,label\n", "is empty"),
        ("text,label\ngood,1\nfine,1\n", "single class"),
        ("text,label\ngood,7\n", "out of range"),
    ],
)
def test_files_loader_errors(tmp_path, content, match):
    (tmp_path / "r.csv").write_text(content)
    with pytest.raises(TransferError, match=match):
        load_domain(DomainConfig(name="r", loader="files", path="r.csv"), tmp_path)


def test_missing_data_says_where_and_how(tmp_path):
    with pytest.raises(TransferError, match=r"not found at .*nowhere.*TRANSFER_DATA_DIR.*experiment=demo"):
        load_domain(DomainConfig(name="books", loader="blitzer", path="books"), tmp_path / "nowhere")


def test_hub_offline_error(tmp_path):
    domain = DomainConfig(name="restaurants", loader="hub", hub_id="fancyzhx/yelp_polarity", hub_split="test")
    with pytest.raises(TransferError, match="could not load 'fancyzhx/yelp_polarity'.*offline.*local"):
        load_domain(domain, tmp_path)


def test_synthetic_is_deterministic_balanced_and_shifted():
    texts, labels = synthetic.generate("demo_films", 400)
    assert (texts, labels) == synthetic.generate("demo_films", 400)
    assert 150 < sum(labels) < 250
    gadgets, _ = synthetic.generate("demo_gadgets", 400)
    vocabulary = lambda ts: {w.strip(".:,") for t in ts for w in t.split()}  # noqa: E731
    films_only, gadgets_only = vocabulary(texts) - vocabulary(gadgets), vocabulary(gadgets) - vocabulary(texts)
    assert {"gripping", "plot"} <= films_only and {"sturdy", "battery"} <= gadgets_only
    # a flipped cue: its polarity in one domain is the opposite of the other
    assert synthetic.FLIPPED["unpredictable"] == 0
    pos_films = [t for t, y in zip(*synthetic.generate("demo_films", 2000)) if y == 1]
    pos_gadgets = [t for t, y in zip(*synthetic.generate("demo_gadgets", 2000)) if y == 1]
    share = lambda ts: sum("unpredictable" in t for t in ts) / len(ts)  # noqa: E731
    assert share(pos_films) > 5 * share(pos_gadgets)
    with pytest.raises(TransferError, match="demo_gadgets"):
        synthetic.generate("nope", 10)
