"""`transfer data download` against a local HTTP server (with Range support), and `transfer data list`."""

from __future__ import annotations

import io
import json
import re
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from .conftest import SMALL
from .test_errors import assert_clean_error

FOLDERS = {"books": "books", "dvd": "dvd", "electronics": "electronics", "kitchen": "kitchen_&_housewares"}


@pytest.fixture(scope="module")
def archive(data_dir) -> bytes:
    """The Multi-Domain Sentiment archive's layout, built from the first 40 reviews of each real file."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for ours, theirs in FOLDERS.items():
            for label in ("positive", "negative"):
                text = (data_dir / "amazon-multi-domain" / ours / f"{label}.review").read_bytes()
                blocks = re.findall(rb"<review>.*?</review>\s*", text, flags=re.S)[:40]
                content = b"".join(blocks)
                info = tarfile.TarInfo(f"sorted_data_acl/{theirs}/{label}.review")
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


@pytest.fixture
def server(archive):
    """Serves the archive at /domain_sentiment_data.tar.gz; honours Range; can cut its first response short."""

    class Handler(BaseHTTPRequestHandler):
        ranges, cut_first = [], False

        def do_GET(self):
            start = int(re.match(r"bytes=(\d+)-", self.headers.get("Range", "bytes=0-")).group(1))
            Handler.ranges.append(start)
            body = archive[start:]
            self.send_response(206 if start else 200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if Handler.cut_first:
                Handler.cut_first = False
                body = body[: len(body) // 3]
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/domain_sentiment_data.tar.gz", Handler
    httpd.shutdown()


def test_download_resumes_and_fills_a_fresh_data_root(cli, tmp_path, server, archive):
    url, handler = server
    root = tmp_path / "fresh-root"
    handler.cut_first = True  # the connection drops a third of the way in
    out = cli("data", "download", "amazon", "--data-dir", str(root), "--url", url)
    assert_clean_error(out, tmp_path, "stopped at", "run the same command again to resume")
    assert not (root / "amazon-multi-domain").exists()  # nothing half-written in place

    out = cli("data", "download", "amazon", "--data-dir", str(root), "--url", url)
    assert out.returncode == 0, out.stderr
    assert handler.ranges == [0, len(archive) // 3]  # the second request resumed where the first stopped
    for domain in FOLDERS:
        for label in ("positive", "negative"):
            assert (root / "amazon-multi-domain" / domain / f"{label}.review").is_file()
    assert "320 labelled reviews" in out.stdout
    assert not list(root.glob(".amazon-*")) and not list((root / ".downloads").iterdir())

    listed = cli("data", "list", "--data-dir", str(root))
    assert re.search(r"books\s.*blitzer\s.*present", listed.stdout) and re.search(r"restaurants\s.*hub only", listed.stdout)

    run = cli("run", "source=books", "target=dvd", *SMALL, env={"TRANSFER_DATA_DIR": str(root)})
    assert run.returncode == 0, run.stderr
    (metrics,) = [json.loads(p.read_text()) for p in tmp_path.rglob("metrics.json")]
    assert metrics["source_train_size"] == 48 and metrics["target_test_size"] == 32

    again = cli("data", "download", "amazon", "--data-dir", str(root), "--url", url)
    assert_clean_error(again, tmp_path / "none", "already exists", "--force")


def test_download_errors(cli, tmp_path, server):
    url, _ = server
    root = tmp_path / "root"
    assert_clean_error(cli("data", "download", "amazon", "--data-dir", str(root), "--url", "http://127.0.0.1:9/x.tar.gz"),
                       tmp_path, "could not reach", "offline")
    assert_clean_error(cli("data", "download", "amazon", "--data-dir", str(root), "--url", url, "--sha256", "0" * 64),
                       tmp_path, "expected sha256")
    assert_clean_error(cli("data", "download", "nothing", "--data-dir", str(root)), tmp_path, "choose amazon or a hub domain", "movies")
    assert_clean_error(cli("data", "download", "imdb", "--data-dir", str(root)), tmp_path, "stanfordnlp/imdb", "offline")
    assert not (root / "amazon-multi-domain").exists()


def test_a_saved_hub_copy_is_used_offline(cli, tmp_path):
    """What `transfer data download restaurants` leaves: hub/restaurants.parquet, preferred to the hub."""
    import pandas as pd

    root = tmp_path / "root"
    (root / "hub").mkdir(parents=True)
    words = [("tasty food, friendly staff", 1), ("cold food, rude staff", 0)] * 60
    pd.DataFrame({"text": [f"{w} #{i}" for i, (w, _) in enumerate(words)], "label": [l for _, l in words]}).to_parquet(root / "hub" / "restaurants.parquet")
    out = cli("run", "experiment=demo", "target=restaurants", *SMALL, env={"TRANSFER_DATA_DIR": str(root)})
    assert out.returncode == 0, out.stderr
    assert "restaurants" in cli("data", "list", "--data-dir", str(root)).stdout
