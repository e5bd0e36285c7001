"""An answer exported as PDF keeps its markdown's text: headings, lists, tables and code."""

from __future__ import annotations

import subprocess
from datetime import datetime
from pathlib import Path

from ragchat.pdf import answer_pdf, pdf_file_name

ANSWER = """## Supported files

Ragchat reads **Markdown** and *PDF*, among others:

- `.md` and `.txt`
- `.pdf`, with page numbers

| Setting | Default |
|---|---|
| TOP_K | 4 |

```python
print("ragchat – ünïcode")
```

Sources: ragchat-user-guide.md"""


def pdf_text(pdf: bytes, tmp_path: Path) -> str:
    path = tmp_path / "answer.pdf"
    path.write_bytes(pdf)
    return subprocess.run(
        ["pdftotext", "-layout", str(path), "-"], capture_output=True, text=True, check=True
    ).stdout


def test_the_pdf_holds_the_question_and_every_part_of_the_answer(tmp_path: Path) -> None:
    pdf = answer_pdf("Which files?", ANSWER, "Ragchat", when=datetime(2026, 11, 22, 9, 30))
    assert pdf.startswith(b"%PDF-")
    text = pdf_text(pdf, tmp_path)
    lines = [" ".join(line.split()) for line in text.splitlines() if line.strip()]
    assert lines[:3] == ["Ragchat · 2026-11-22 09:30", "Which files?", "Supported files"]
    assert "Ragchat reads Markdown and PDF, among others:" in lines
    assert any(line.endswith(".md and .txt") for line in lines)  # a list item, bullet first
    assert "Setting Default" in lines and "TOP_K 4" in lines  # the table's cells, in rows
    assert 'print("ragchat – ünïcode")' in lines  # code, in a font that has these letters
    assert lines[-1] == "Sources: ragchat-user-guide.md"
    assert "**" not in text and "|---|" not in text and "```" not in text


def test_the_file_is_named_after_the_question() -> None:
    assert pdf_file_name("How do I add my own documents?") == "how-do-i-add-my-own.pdf"
    assert pdf_file_name("???") == "answer.pdf"
