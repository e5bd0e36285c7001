"""An answer as a PDF: its markdown (headings, lists, tables, code) rendered by fpdf2.

markdown-it turns the markdown into HTML and fpdf2 lays that out. The DejaVu fonts ship with
ragchat (ragchat/fonts, with their licence), so any language the answer is in prints, not only
the Latin-1 that PDF's built-in fonts cover.
"""

from __future__ import annotations

from datetime import datetime
from html import escape
from pathlib import Path

from fpdf import FPDF
from fpdf.fonts import FontFace
from markdown_it import MarkdownIt

FONTS = Path(__file__).parent / "fonts"
_markdown = MarkdownIt("commonmark", {"html": False}).enable("table").enable("strikethrough")


def answer_pdf(question: str, answer: str, bot_name: str, when: datetime | None = None) -> bytes:
    pdf = FPDF(format="A4")
    pdf.set_title(question[:200])
    pdf.set_creator(bot_name)
    pdf.add_font("Sans", "", FONTS / "DejaVuSans.ttf")
    pdf.add_font("Sans", "B", FONTS / "DejaVuSans-Bold.ttf")
    pdf.add_font("Sans", "I", FONTS / "DejaVuSans-Oblique.ttf")
    pdf.add_font("Sans", "BI", FONTS / "DejaVuSans-BoldOblique.ttf")
    pdf.add_font("Mono", "", FONTS / "DejaVuSansMono.ttf")
    pdf.add_page()
    stamp = (when or datetime.now()).strftime("%Y-%m-%d %H:%M")
    pdf.set_font("Sans", size=9)
    pdf.set_text_color(110)
    pdf.cell(text=f"{bot_name} · {stamp}", new_x="LMARGIN", new_y="NEXT")
    pdf.set_text_color(0)
    html = f"<h2>{escape(question)}</h2>" + _markdown.render(answer)
    pdf.write_html(
        html,
        font_family="Sans",
        tag_styles={
            "code": FontFace(family="Mono", color=(60, 60, 60)),
            "pre": FontFace(family="Mono"),
        },
        warn_on_tags_not_matching=False,
    )
    return bytes(pdf.output())


def pdf_file_name(question: str) -> str:
    words = "".join(c if c.isalnum() else " " for c in question).split()[:6]
    return ("-".join(words).lower() or "answer") + ".pdf"
