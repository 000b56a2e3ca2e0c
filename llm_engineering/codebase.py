"""A digest of the library's own code, for cache keys: ZenML's cache key covers a step's own source and parameters,
not the library code the step calls, so a changed `llm_engineering` must change the key (and the datasets cache)."""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent


@functools.lru_cache(maxsize=1)
def library_digest() -> str:
    """SHA-256 over every Python file of the package and the data it ships (the regression probes), path and
    content, the same in every clone of one commit."""
    digest = hashlib.sha256()
    for path in sorted([*PACKAGE.rglob("*.py"), *PACKAGE.rglob("*.jsonl")]):
        digest.update(str(path.relative_to(PACKAGE)).encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()
