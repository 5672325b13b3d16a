"""A report written once and rendered twice: Markdown (plots as PNG files beside it) and one self-contained HTML page."""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .plots import data_uri

_CSS = ("body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222}"
        "table{border-collapse:collapse;margin:1rem 0}td,th{border:1px solid #ccc;padding:.3rem .6rem}"
        "td.n{text-align:right;font-variant-numeric:tabular-nums}th{background:#f3f3f3}"
        "img{max-width:100%}.verdict{font-size:1.1rem;background:#eef6ee;padding:.8rem;border-left:4px solid #4a4}")


@dataclass
class Report:
    title: str
    blocks: list[tuple[str, Any]] = field(default_factory=list)

    def heading(self, text: str) -> None:
        self.blocks.append(("h2", text))

    def text(self, text: str, cls: str = "") -> None:
        self.blocks.append(("p", (text, cls)))

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
            elif kind == "table":
                header, rows = b
                out += ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
                out += ["| " + " | ".join(_cell(c) for c in r) + " |" for r in rows] + [""]
            else:
                out += [f"![{b[1]}]({b[0].name})", ""]
        return "\n".join(out)

    def html(self) -> str:
        out = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(self.title)}</title>"
               f"<style>{_CSS}</style></head><body><h1>{html.escape(self.title)}</h1>"]
        for kind, b in self.blocks:
            if kind == "h2":
                out.append(f"<h2>{html.escape(b)}</h2>")
            elif kind == "p":
                out.append(f"<p class='{b[1]}'>{html.escape(b[0])}</p>")
            elif kind == "table":
                header, rows = b
                out.append("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>")
                for r in rows:
                    out.append("<tr>" + "".join(
                        f"<td class='{'n' if isinstance(c, (int, float)) else ''}'>{html.escape(_cell(c))}</td>" for c in r) + "</tr>")
                out.append("</table>")
            else:
                out.append(f"<img src='{data_uri(b[0])}' alt='{html.escape(b[1])}'>")
        out.append("</body></html>")
        return "\n".join(out)


def _cell(c: Any) -> str:
    if c is None:
        return "–"
    if isinstance(c, float):
        return f"{c:,.4g}" if abs(c) >= 1e4 or (c != 0 and abs(c) < 1e-3) else f"{c:.4f}".rstrip("0").rstrip(".")
    if isinstance(c, int):
        return f"{c:,}"
    return str(c)
