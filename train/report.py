"""A report written once and rendered twice: Markdown (plots as PNG files beside it) and one self-contained HTML page."""

from __future__ import annotations

import html
from dataclasses import dataclass, field
import math
from pathlib import Path
from typing import Any

_CSS = ("body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222}"
        "table{border-collapse:collapse;margin:1rem 0}td,th{border:1px solid #ccc;padding:.3rem .6rem}"
        "td.n{text-align:right;font-variant-numeric:tabular-nums}th{background:#f3f3f3}"
        "img{max-width:100%}.verdict{line-height:1.5;background:#eef6ee;padding:.4rem 1rem;border-left:4px solid #4a4}"
        ".verdict p{font-size:1.1rem}td.n{white-space:nowrap}td.w{overflow-wrap:anywhere}")


@dataclass
class Report:
    title: str
    blocks: list[tuple[str, Any]] = field(default_factory=list)

    def heading(self, text: str) -> None:
        self.blocks.append(("h2", text))

    def text(self, text: str, cls: str = "") -> None:
        self.blocks.append(("p", (text, cls)))

    def verdict(self, head: str, points: list[str]) -> None:
        """The conclusion, in bold, and the numbers behind it as a list."""
        self.blocks.append(("verdict", (head, points)))

    def table(self, header: list[str], rows: list[list[Any]]) -> None:
        self.blocks.append(("table", (header, rows)))

    def image(self, path: Path, alt: str) -> None:
        self.blocks.append(("img", (Path(path), alt)))

    def markdown(self) -> str:
        out = [f"# {self.title}", ""]
        for kind, b in self.blocks:
            if kind == "h2":
                out += [f"## {b}", ""]
            elif kind == "p":
                out += [f"**{b[0]}**" if b[1] == "verdict" else b[0], ""]
            elif kind == "verdict":
                out += [f"**{b[0]}**", ""] + [f"- {x}" for x in b[1]] + [""]
            elif kind == "table":
                header, rows = b
                out += ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
                out += ["| " + " | ".join(number(c) for c in r) + " |" for r in rows] + [""]
            else:
                out += [f"![{b[1]}]({b[0].name})", ""]
        return "\n".join(out)

    def html(self) -> str:
        from .plots import data_uri

        out = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(self.title)}</title>"
               f"<style>{_CSS}</style></head><body><h1>{html.escape(self.title)}</h1>"]
        for kind, b in self.blocks:
            if kind == "h2":
                out.append(f"<h2>{html.escape(b)}</h2>")
            elif kind == "p":
                out.append(f"<p class='{b[1]}'>{html.escape(b[0])}</p>")
            elif kind == "verdict":
                out.append(f"<div class='verdict'><p><b>{html.escape(b[0])}</b></p><ul>"
                           + "".join(f"<li>{html.escape(x)}</li>" for x in b[1]) + "</ul></div>")
            elif kind == "table":
                header, rows = b
                out.append("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>")
                for r in rows:
                    out.append("<tr>" + "".join(
                        f"<td class='{_cls(c)}'>{html.escape(number(c))}</td>" for c in r) + "</tr>")
                out.append("</table>")
            else:
                out.append(f"<img src='{data_uri(b[0])}' alt='{html.escape(b[1])}'>")
        out.append("</body></html>")
        return "\n".join(out)


def _cls(c: Any) -> str:
    """Numbers right-aligned on one line; long text (paths) may break anywhere, short text only between words."""
    return "n" if isinstance(c, (int, float)) else "w" if len(str(c)) > 30 else ""


def number(x: Any) -> str:
    """A number for reading: thousands separators; none from 1,000 up, 2 decimals from 1 up, 3 below 1 (4 below 0.01)."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return str(x)
    if isinstance(x, int):
        return f"{x:,}"
    a = abs(x)
    if a >= 1000:
        s = f"{a:,.0f}"
    elif a >= 1:
        s = f"{a:.2f}"
    elif a == 0:
        return "0"
    else:
        s = f"{a:.3f}" if a >= 0.01 else f"{a:.4f}" if a >= 0.0001 else f"{a:.1e}"
    return ("−" if x < 0 else "") + s  # the minus sign, not a hyphen

