"""`transfer data list` and `transfer data download NAME`: what is in the data root, and fetching real data sets.

- `amazon`: the Multi-Domain Sentiment Dataset archive from its page at Johns Hopkins University. Its labelled
  `positive.review` / `negative.review` files of books, dvd, electronics and kitchen become
  `amazon-multi-domain/DOMAIN/`. The download resumes from a partial file (HTTP Range), its size is checked against
  the server's, and `--sha256` pins its hash (the page publishes none).
- a hub domain (`movies` or `imdb`, `restaurants`, `sst2`, ...): fetched with `datasets` and saved as
  `hub/NAME.parquet`, which the domain then prefers to the hub.

Everything lands in a temporary folder inside the data root first and is renamed into place at the end, so an
interrupted download never leaves a half-written data set behind.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Dict, List, Optional

from ..console import print_table
from ..errors import TransferError
from .loaders import _resolve, hub_copy, parse_blitzer

AMAZON_URL = "https://www.cs.jhu.edu/~mdredze/datasets/sentiment/domain_sentiment_data.tar.gz"
AMAZON_FOLDER = "amazon-multi-domain"
# archive folder -> our domain name (the archive's sorted_data_acl/ holds these four)
AMAZON_DOMAINS = {"books": "books", "dvd": "dvd", "electronics": "electronics", "kitchen_&_housewares": "kitchen"}
ALIASES = {"imdb": "movies"}
CHUNK = 1 << 16


def default_data_dir() -> Path:
    return Path(os.environ.get("TRANSFER_DATA_DIR", "data")).expanduser()


def fetch(url: str, target: Path, progress) -> None:
    """Download `url` to `target`, resuming from `target` if it holds the first bytes already."""
    done = target.stat().st_size if target.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={done}-"} if done else {})
    try:
        response = urllib.request.urlopen(request, timeout=60)
    except urllib.error.HTTPError as e:
        if e.code == 416 and done:  # the range starts at the end: the file is complete
            return
        raise TransferError(f"could not download {url} (HTTP {e.code} {e.reason}); check the URL or try later") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise TransferError(f"could not reach {url} ({reason}); are you offline? Download it elsewhere and "
                            "pass --url file:///path/to/archive, or copy the data into the data root") from None
    with response:
        if done and response.status != 206:  # the server ignored the range: start again
            done = 0
        length = response.headers.get("Content-Length")
        total = done + int(length) if length is not None else None
        task = progress.add_task(f"download {target.name}", total=total, completed=done)
        with target.open("ab" if done else "wb") as out:
            while chunk := response.read(CHUNK):
                out.write(chunk)
                progress.update(task, advance=len(chunk))
    if total is not None and target.stat().st_size != total:
        raise TransferError(f"the download of {url} stopped at {target.stat().st_size} of {total} bytes; "
                            "run the same command again to resume")


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def download_amazon(data_dir: Path, url: str, expected_sha256: Optional[str], force: bool, progress) -> Dict[str, int]:
    """Fetch, check and unpack the archive; returns the number of reviews per domain."""

    final = data_dir / AMAZON_FOLDER
    if final.exists() and not force:
        raise TransferError(f"{final} already exists; pass --force to download it again")
    data_dir.mkdir(parents=True, exist_ok=True)
    archive = data_dir / ".downloads" / Path(urllib.parse.urlparse(url).path).name
    archive.parent.mkdir(exist_ok=True)
    fetch(url, archive, progress)
    if expected_sha256 and sha256(archive) != expected_sha256.lower():
        archive.unlink()
        raise TransferError(f"{url} does not have the expected sha256 {expected_sha256}; the partial download was removed")

    counts: Dict[str, int] = {}
    with tempfile.TemporaryDirectory(dir=data_dir, prefix=".amazon-") as tmp:
        staging = Path(tmp) / AMAZON_FOLDER
        try:
            with tarfile.open(archive) as tar:
                members = {Path(m.name): m for m in tar.getmembers() if m.isfile()}
                for folder, name in AMAZON_DOMAINS.items():
                    for label in ("positive", "negative"):
                        member = next((m for p, m in members.items() if p.parts[-2:] == (folder, f"{label}.review")), None)
                        if member is None:
                            raise TransferError(f"{archive.name} has no {folder}/{label}.review; is it the Multi-Domain "
                                                "Sentiment archive (domain_sentiment_data.tar.gz)?")
                        out = staging / name / f"{label}.review"
                        out.parent.mkdir(parents=True, exist_ok=True)
                        with tar.extractfile(member) as src, out.open("wb") as dst:
                            shutil.copyfileobj(src, dst)
                        reviews = len(parse_blitzer(out))
                        if reviews == 0:
                            raise TransferError(f"{folder}/{label}.review in {archive.name} holds no review")
                        counts[f"{name}/{label}"] = reviews
        except (tarfile.TarError, EOFError, OSError) as e:
            archive.unlink(missing_ok=True)
            raise TransferError(f"{archive.name} is not a readable tar archive ({e}); it was removed, run again") from None
        if final.exists():
            shutil.rmtree(final)
        staging.rename(final)
    archive.unlink()
    return counts


def download_hub(domain, data_dir: Path, force: bool) -> int:
    target = hub_copy(data_dir, domain.name)
    if target.exists() and not force:
        raise TransferError(f"{target} already exists; pass --force to download it again")
    try:
        import datasets
        from huggingface_hub.utils import logging as hub_logging

        hub_logging.set_verbosity_error()  # one line when offline, not a warning per retry
        data = datasets.load_dataset(domain.hub_id, domain.hub_config, split=domain.hub_split)
    except Exception as e:  # network, auth, missing id
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise TransferError(f"could not download '{domain.hub_id}' from the Hugging Face Hub ({reason}); are you offline?") from None
    frame = data.to_pandas()[[domain.text_column, domain.label_column]]
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=target.parent, suffix=".parquet", delete=False) as tmp:
        frame.to_parquet(tmp.name, index=False)
    os.replace(tmp.name, target)
    return len(frame)


def presence(domain, data_dir: Path) -> tuple:
    """(status, where) of a domain's data under the data root."""

    if domain.loader == "synthetic":
        return "built in", "generated"
    if domain.loader == "blitzer":
        folder = _resolve(domain.path or domain.name, data_dir)
        ok = all((folder / f"{label}.review").is_file() for label in ("positive", "negative"))
        return ("present" if ok else "missing"), str(folder)
    if domain.loader == "files":
        path = _resolve(domain.path or "", data_dir)
        return ("present" if path.is_file() else "missing"), str(path)
    for candidate in ([_resolve(domain.local.path, data_dir)] if domain.local else []) + [hub_copy(data_dir, domain.name)]:
        if candidate.is_file():
            return "present", str(candidate)
    return "hub only", f"{domain.hub_id} (needs the network, or `transfer data download {domain.name}`)"


def domains(config_dirs: List[Path]) -> Dict[str, object]:
    from ..config import DomainConfig, group_options, load_option

    return {name: load_option(path, DomainConfig) for name, path in group_options("source", config_dirs).items()}


def main(argv: List[str]) -> None:
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn
    from rich.table import Table

    from ..config import search_dirs

    parser = argparse.ArgumentParser(prog="transfer data", description="What is in the data root, and fetching real data.")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (("list", "show which domains have their data here"), ("download", "fetch a data set")):
        sub = commands.add_parser(name, help=help_text)
        sub.add_argument("--data-dir", type=Path, default=default_data_dir(),
                         help="the data root (default: $TRANSFER_DATA_DIR, else ./data)")
        sub.add_argument("--config-dir", "-cd", help="a config folder of yours with more domains")
        if name == "download":
            sub.add_argument("name", help="amazon, or a hub domain such as movies (alias imdb), restaurants, sst2")
            sub.add_argument("--url", default=AMAZON_URL, help="amazon: the archive's URL (a mirror, or file:///...)")
            sub.add_argument("--sha256", help="amazon: the archive's expected sha256")
            sub.add_argument("--force", action="store_true", help="download again over an existing copy")
    args = parser.parse_args(argv)
    data_dir = args.data_dir.expanduser()
    found = domains(search_dirs(["--config-dir", args.config_dir] if args.config_dir else []))
    console = Console()

    if args.command == "list":
        table = Table(title=f"data root: {data_dir.resolve()}", title_justify="left")
        for column in ("domain", "loader", "status", "where"):
            table.add_column(column)
        for name, domain in found.items():
            status, where = presence(domain, data_dir)
            style = {"present": "green", "built in": "green", "missing": "red"}.get(status, "yellow")
            table.add_row(name, domain.loader.value, f"[{style}]{status}[/]", where)
        print_table(table, console)
        return

    name = ALIASES.get(args.name, args.name)
    progress = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                        TimeRemainingColumn(), console=console)
    if name == "amazon":
        with progress:
            counts = download_amazon(data_dir, args.url, args.sha256, args.force, progress)
        console.print(f"amazon: {sum(counts.values())} labelled reviews in {data_dir / AMAZON_FOLDER} "
                      f"({', '.join(f'{k} {v}' for k, v in counts.items())})")
    elif name in found and found[name].loader == "hub":
        rows = download_hub(found[name], data_dir, args.force)
        console.print(f"{name}: {rows} examples saved to {hub_copy(data_dir, name)}")
    else:
        hub = sorted(n for n, d in found.items() if d.loader == "hub")
        raise TransferError(f"nothing to download for '{args.name}'; choose amazon or a hub domain: {', '.join(hub)}")
