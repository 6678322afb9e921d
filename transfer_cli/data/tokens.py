"""Tokenize once, reuse across runs: token ids are cached on disk, keyed by tokenizer, max length and the texts."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import List

import numpy as np

from ..cache import load_entry, save_entry

log = logging.getLogger(__name__)


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of the tokenizer's full definition (vocabulary, normalisation, special tokens)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        spec = json.loads(backend.to_str())
        # transformers sets these per call (truncation=True, ...): they are state, not definition
        spec.pop("truncation", None)
        spec.pop("padding", None)
        definition = json.dumps(spec, sort_keys=True)
    else:
        definition = repr(sorted(tokenizer.get_vocab().items()))
    return hashlib.sha256(f"{type(tokenizer).__name__}\0{definition}".encode()).hexdigest()


def cache_key(fingerprint: str, max_length: int, texts: List[str]) -> str:
    h = hashlib.sha256(f"{fingerprint}\0{max_length}\0".encode())
    for text in texts:
        h.update(text.encode("utf-8", "replace") + b"\0")
    return h.hexdigest()[:32]


def tokenize(texts: List[str], tokenizer, max_length: int, cache_dir: Path) -> List[np.ndarray]:
    """Token ids (with special tokens, truncated to max_length) of every text; read from the cache when present."""
    path = Path(cache_dir) / "tokens" / f"{cache_key(tokenizer_fingerprint(tokenizer), max_length, texts)}.npz"
    stored = load_entry(path, lambda a: len(a["offsets"]) == len(texts) + 1 and a["offsets"][-1] == len(a["ids"]))
    if stored is not None:
        log.info("tokens: %d texts from the cache (%s)", len(texts), path.name)
        return np.split(stored["ids"], stored["offsets"][1:-1])
    log.info("tokens: tokenizing %d texts (max_length %d)", len(texts), max_length)
    ids: List[np.ndarray] = []
    for start in range(0, len(texts), 1024):
        encoded = tokenizer(texts[start : start + 1024], truncation=True, max_length=max_length)["input_ids"]
        ids += [np.asarray(e, dtype=np.int32) for e in encoded]
    offsets = np.cumsum([0] + [len(i) for i in ids])
    save_entry(path, ids=np.concatenate(ids) if ids else np.zeros(0, np.int32), offsets=offsets)
    return ids
