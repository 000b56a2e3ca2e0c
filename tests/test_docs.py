"""The docs as a user reads them: the config reference matches the schema, the site builds with no broken link, and
the README stays a front page."""

import os
import subprocess
import sys
from pathlib import Path

from llm_engineering.config_reference import render, rows
from llm_engineering.config import RunConfig

PROJECT = Path(__file__).resolve().parent.parent


def test_the_config_reference_is_generated_from_the_schema_and_describes_every_key():
    assert (PROJECT / "docs" / "config.md").read_text() == render(), (
        "docs/config.md is stale: python -m llm_engineering.config_reference > docs/config.md")
    documented = rows(RunConfig, "", [])
    assert [key for _, key, _, _, description in documented if not description] == []
    keys = {key: (kind, default) for _, key, kind, default, _ in documented}
    # a few keys as a user looks them up: nested sections, list entries, allowed values, bounds, defaults
    assert keys["train.lr_scheduler"][0] == "`linear` | `cosine` | `constant` | `constant_with_warmup`"
    assert keys["adapter.r"] == ("int (> `0`)", "`8`")
    assert keys["model.quantization.quant_type"] == ("`nf4` | `fp4`", '`"nf4"`')
    assert "data.sources[].weight" in keys and "eval.harness.limit" in keys
    assert keys["preference.start_adapter"][1] == "`null`"


def test_the_docs_site_builds_strictly_and_the_readme_links_only_to_pages_that_exist(tmp_path):
    built = subprocess.run([str(Path(sys.executable).parent / "mkdocs"), "build", "--strict", "--site-dir",
                            str(tmp_path / "site")], cwd=PROJECT, capture_output=True, text=True, timeout=300,
                           env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert built.returncode == 0, built.stderr[-3000:]
    assert (tmp_path / "site" / "config" / "index.html").exists()
    pages = {p.name for p in (PROJECT / "docs").glob("*.md")}
    nav = (PROJECT / "mkdocs.yml").read_text()
    assert [page for page in sorted(pages) if f": {page}" not in nav] == []  # every page is in the nav
    readme = (PROJECT / "README.md").read_text()
    linked = {part.split(")")[0] for part in readme.split("](docs/")[1:]}
    assert linked and linked <= pages
    assert len(readme.splitlines()) <= 150  # the front page; the rest lives in docs/
