"""Where the library keeps files that outlive a run (the converted embedded model)."""

import os
from pathlib import Path


def cache_home() -> Path:
    """`$LLM_ENGINEERING_HOME`, else `~/.cache/llm_engineering`."""
    root = os.environ.get("LLM_ENGINEERING_HOME") or Path.home() / ".cache" / "llm_engineering"
    return Path(root).expanduser().resolve()
