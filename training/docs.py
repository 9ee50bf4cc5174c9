"""Writing one named section of a Markdown document (docs/results.md, docs/benchmarks.md) without touching the others."""
from __future__ import annotations

from pathlib import Path


def update_section(path: Path, key: str, content: str, title: str = "# Benchmarks\n") -> None:
    """Replace the block between ``<!-- begin KEY -->`` and ``<!-- end KEY -->`` (or append it)."""
    begin, end = f"<!-- begin {key} -->", f"<!-- end {key} -->"
    block = f"{begin}\n{content.rstrip()}\n{end}\n"
    text = path.read_text() if path.exists() else title
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(end, 1)[1].lstrip("\n")
    else:
        text = text.rstrip("\n") + "\n\n" + block
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
