"""The report as one HTML page that reads at a phone's width (about 390 px) and a desktop's: the same markdown
as report.md (render.py), with the verdict set apart, every table in its own horizontal scroller, images no
wider than the page and the protocol folded under `<details>`, so the answer and the tables come first.
"""

from __future__ import annotations

import html
import re

from slimlm.experiments.protocol_text import protocol_body
from slimlm.experiments.render import body_lines, title_lines, verdict_lines

CSS = (
    "*{box-sizing:border-box}\n"
    "body{font-family:system-ui,sans-serif;max-width:1200px;margin:1.5em auto;padding:0 12px;"
    "line-height:1.45;color:#222}\n"
    "p,li{overflow-wrap:break-word}h1{font-size:1.6em;line-height:1.2}\n"
    ".verdict{background:#f3f7fc;border-left:4px solid #3a6ea5;padding:2px 14px;margin:1em 0}\n"
    ".scroll{overflow-x:auto;margin:1em 0;-webkit-overflow-scrolling:touch}\n"
    "table{border-collapse:collapse;font-size:0.9em}"
    "th,td{border:1px solid #ccc;padding:4px 8px;text-align:right;vertical-align:top}\n"
    "th{background:#f2f2f2;min-width:4.5em}"
    "td:first-child,th:first-child{text-align:left}td:first-child{white-space:nowrap}"
    "td.text{text-align:left;min-width:9em}\n"
    "img{max-width:100%;height:auto;border:1px solid #eee}.nw{white-space:nowrap}\n"
    "code,pre{background:#f6f6f6;padding:2px 4px}pre{padding:8px;overflow-x:auto}\n"
    "details{margin:1.5em 0;border-top:1px solid #ddd}"
    "summary{font-size:1.5em;font-weight:bold;cursor:pointer;padding:0.5em 0}"
)


def render_html(report: dict) -> str:
    """The page: title and verdict, the tables and plots, then the protocol folded away."""
    body = (
        _html(title_lines(report))
        + f'\n<div class="verdict">\n{_html(verdict_lines(report))}\n</div>\n'
        + _html(body_lines(report))
        + f"\n<details>\n<summary>Protocol</summary>\n{_html(protocol_body(report))}\n</details>"
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{html.escape('slimlm report: ' + report['title'])}</title>\n"
        f"<style>{CSS}</style></head>\n<body>\n{body}\n</body></html>\n"
    )


def _html(lines: list[str]) -> str:
    """Markdown to HTML, each table wrapped in a scroller so a wide one scrolls instead of widening the page, and
    each plot a link to itself, so a phone can open a figure drawn for a desktop at its full size. Two-space
    indents nest lists, as report.md writes them."""
    import markdown

    body = markdown.markdown("\n".join(lines), extensions=["tables", "fenced_code"], tab_length=2)
    body = body.replace("<table>", '<div class="scroll">\n<table>').replace("</table>", "</table>\n</div>")
    body = body.replace(" ± ", "\u00a0±\u00a0")  # a cell wraps between words, never inside "mean ± std"
    body = re.sub(r"\(([+−0]+, n=\d+)\)", r'<span class="nw">(\1)</span>', body)  # nor inside "(+−+, n=3)"
    body = re.sub(r"<td>(?=[^<\d+\-–])", '<td class="text">', body)  # words, not numbers: left, not squeezed
    return re.sub(r'(<img alt="[^"]*" src="([^"]*)" />)', r'<a href="\2">\1</a>', body)
