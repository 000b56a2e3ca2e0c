"""The rows a pipeline trains on, by name. Above both row kinds (prepare.py's SFT rows, preference.py's pairs), so
the data-stage engine in prepare.py never imports the preference rows that are built on it."""

from llm_engineering.data.preference import PREFERENCE_ROWS
from llm_engineering.data.prepare import SFT_ROWS, RowKind

ROW_KINDS = {SFT_ROWS.name: SFT_ROWS, PREFERENCE_ROWS.name: PREFERENCE_ROWS}


def row_kind(name: str) -> RowKind:
    """"finetune" (SFT chat or text rows) or "preference" (prompt/chosen/rejected pairs)."""
    if name not in ROW_KINDS:
        raise ValueError(f"unknown kind of rows {name!r} (finetune or preference)")
    return ROW_KINDS[name]
