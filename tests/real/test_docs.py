"""Every docs page's example runs, and prints exactly the output the page shows.

A page marks its example as a ```python block followed by a ```text block holding the
output. The example runs in a fresh interpreter; stdout must equal the text block.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[2] / "docs"
# A code block never spans a fence: an unchecked python block before a checked one stays out of it.
EXAMPLE = re.compile(r"```python\n(?P<code>(?:(?!```).)*?)```\s*\n+Output:\s*\n+```text\n(?P<out>.*?)```", re.S)
PAGES = sorted(p for p in DOCS.glob("*.md") if EXAMPLE.search(p.read_text()))


def test_docs_have_examples():
    assert PAGES, "no docs page carries a checked example"


@pytest.mark.parametrize("page", PAGES, ids=[p.stem for p in PAGES])
def test_doc_example_output_is_real(page):
    for match in EXAMPLE.finditer(page.read_text()):
        run = subprocess.run([sys.executable, "-c", match["code"]], capture_output=True, text=True,
                             env={**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}, timeout=600)
        assert run.returncode == 0, run.stderr[-3000:]
        assert run.stdout == match["out"], f"{page.name}: output differs\n--- got ---\n{run.stdout}"
