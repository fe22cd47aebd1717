"""The report page: a list of `Block` (heading, paragraph, note, table, image, link) rendered
as one self-contained HTML page (images embedded) and as Markdown.

`kidneyseg.reporting` decides what goes on the page; this module only renders it.

Example:
    >>> blocks = [Block("h2", "Summary"), Block("table", header=("a", "b|c"), rows=(("1", "2"),))]
    >>> print(render_markdown(blocks, "kidneyseg report"))
    # kidneyseg report
    <BLANKLINE>
    ## Summary
    <BLANKLINE>
    | a | b\\|c |
    | --- | --- |
    | 1 | 2 |
    <BLANKLINE>
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Block:
    """One element of the page; ``image`` is a file name in the report folder (``img``) or a
    link target (``link``)."""

    kind: str  # "h2" | "p" | "note" | "table" | "img" | "link" (text, target in image)
    text: str = ""
    header: tuple[str, ...] = ()
    rows: tuple[tuple[str, ...], ...] = ()
    image: str = ""


def render_html(blocks: list[Block], out: Path, title: str) -> str:
    """The HTML page: one file, each ``img`` block's PNG (read from ``out``) embedded."""
    css = (
        "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;"
        "color:#222}table{border-collapse:collapse;margin:.5em 0 1em}th,td{border:1px solid #bbb;"
        "padding:3px 8px;text-align:right;font-size:13px}th{background:#eee}td:first-child,"
        "th:first-child{text-align:left}figure{margin:1em 0}img{max-width:100%;"
        "border:1px solid #ddd}figcaption{font-size:13px;color:#555}.note{background:#fff6d6;"
        "padding:.4em .8em;border-left:4px solid #e0b000}"
    )
    parts = [
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
        f"</title><style>{css}</style></head><body><h1>{html.escape(title)}</h1>"
    ]
    for b in blocks:
        if b.kind == "h2":
            parts.append(f"<h2>{html.escape(b.text)}</h2>")
        elif b.kind in ("p", "note"):
            cls = " class='note'" if b.kind == "note" else ""
            parts.append(f"<p{cls}>{html.escape(b.text)}</p>")
        elif b.kind == "table":
            head = "".join(f"<th>{html.escape(h)}</th>" for h in b.header)
            body = "".join(
                "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
                for row in b.rows
            )
            parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif b.kind == "img":
            data = base64.b64encode((out / b.image).read_bytes()).decode("ascii")
            parts.append(
                f"<figure><img alt='{html.escape(b.image)}' src='data:image/png;base64,{data}'>"
                f"<figcaption>{html.escape(b.text)}</figcaption></figure>"
            )
        elif b.kind == "link":
            parts.append(f"<p><a href='{html.escape(b.image)}'>{html.escape(b.text)}</a></p>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|")


def render_markdown(blocks: list[Block], title: str) -> str:
    """The Markdown page (``report.md``): images referenced by file name, beside it."""
    lines = [f"# {title}", ""]
    for b in blocks:
        if b.kind == "h2":
            lines += [f"## {b.text}", ""]
        elif b.kind == "p":
            lines += [b.text, ""]
        elif b.kind == "note":
            lines += [f"> **Note:** {b.text}", ""]
        elif b.kind == "table":
            lines.append("| " + " | ".join(_md_cell(h) for h in b.header) + " |")
            lines.append("|" + "|".join(" --- " for _ in b.header) + "|")
            lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in b.rows]
            lines.append("")
        elif b.kind == "img":
            lines += [f"![{b.image}]({b.image})", "", f"*{b.text}*", ""]
        elif b.kind == "link":
            lines += [f"[{b.text}]({b.image})", ""]
    return "\n".join(lines)
