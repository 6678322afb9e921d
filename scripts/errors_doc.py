"""Rewrite docs/errors.md from the catalogue of bad inputs (tests/test_bad_inputs.py): run every case through the CLI,
as the test does, and record the one line the user sees. The test checks each line against this file.

    python scripts/errors_doc.py            # about 3 minutes on 2 cores
"""

from __future__ import annotations

import os
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.conftest import SLICE_DIR  # noqa: E402
from tests.test_bad_inputs import CASES, normalise, run_case  # noqa: E402

HEADER = """# What a bad input gets

Every row is a case of `tests/test_bad_inputs.py`, run through the real CLI (`transfer run` on the test slice, with
the tiny model). Each ends with this one line on stderr, exit code 2, no traceback and no `metrics.json`;
`status.json` records the same line as `failed` wherever a run folder exists (a config that Hydra cannot compose
stops before any folder is made); the cache and earlier runs are left as they were. `<case>` stands for the folder
the case ran in. The test compares every line with this table; `python scripts/errors_doc.py` rewrites it.

| case | input | what the user sees |
| --- | --- | --- |
"""


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="errors-doc-"))
    env = {**os.environ, "TRANSFER_DATA_DIR": str(SLICE_DIR), "TRANSFER_CACHE_DIR": str(root / "cache"),
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "COLUMNS": "200"}

    def one(case):
        folder = root / case.id
        folder.mkdir()
        out = run_case(case, folder, env)
        lines = [line for line in out.stderr.splitlines() if line.strip()]
        line = normalise(lines[-1], folder) if lines else ""
        if out.returncode != 2 or len(lines) != 1:
            print(f"{case.id}: exit {out.returncode}, {len(lines)} lines: {out.stderr[-500:]}", file=sys.stderr)
        return f"| `{case.id}` | {case.what} | `{line.replace('|', chr(92) + '|')}` |"

    # the cases' setups import from transformers, whose lazy imports are not thread-safe: import them here first
    from transformers import AutoTokenizer, BertConfig, BertModel, PreTrainedTokenizerFast, ViTConfig, ViTModel  # noqa: F401

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        table = list(pool.map(one, CASES))
    (REPO / "docs" / "errors.md").write_text(HEADER + "\n".join(table) + "\n")
    print(f"docs/errors.md: {len(table)} cases")


if __name__ == "__main__":
    main()
