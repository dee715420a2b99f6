"""A self-contained HTML document: text, tables and PNG figures embedded as data URIs (no external files)."""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

_STYLE = """
body { font-family: -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; max-width: 1100px; margin: 2em auto;
       padding: 0 1em; color: #1d1d1f; line-height: 1.45; }
h1 { border-bottom: 2px solid #3b6ea5; padding-bottom: .3em; }
h2 { margin-top: 2em; color: #24476b; border-bottom: 1px solid #d0d7de; padding-bottom: .2em; }
table { border-collapse: collapse; margin: 1em 0; font-size: .88em; display: block; overflow-x: auto; max-width: 100%; }
th, td { border: 1px solid #d0d7de; padding: .3em .6em; text-align: right; }
th { background: #f3f6f9; } td:first-child, th:first-child { text-align: left; }
img { max-width: 100%; border: 1px solid #e5e5e5; margin: .5em 0; }
.conclusion { background: #eef5ee; border-left: 4px solid #3c8d40; padding: .6em 1em; }
.warning { background: #fff6e5; border-left: 4px solid #d48a00; padding: .6em 1em; }
pre { background: #f6f8fa; padding: .8em; overflow-x: auto; font-size: .8em; }
figcaption { font-size: .85em; color: #555; }
"""


@dataclass
class HtmlReport:
    """Collects sections and writes one HTML file with everything embedded."""

    title: str
    parts: list[str] = field(default_factory=list)

    def heading(self, text: str, level: int = 2) -> None:
        anchor = "".join(c if c.isalnum() else "-" for c in text.lower())
        self.parts.append(f'<h{level} id="{anchor}">{html.escape(text)}</h{level}>')

    def paragraph(self, text: str, *, css_class: str | None = None) -> None:
        cls = f' class="{css_class}"' if css_class else ""
        self.parts.append(f"<p{cls}>{html.escape(text)}</p>")

    def table(self, frame: pd.DataFrame, *, caption: str | None = None, float_format: str = "{:.3g}") -> None:
        shown = frame.copy()
        for column in shown.columns:
            if pd.api.types.is_float_dtype(shown[column]):
                shown[column] = shown[column].map(lambda v: "" if pd.isna(v) else float_format.format(v))
        if caption:
            self.parts.append(f"<figcaption>{html.escape(caption)}</figcaption>")
        self.parts.append(shown.to_html(index=False, escape=True, border=0))

    def figure(self, png: str | Path | bytes, *, caption: str = "") -> None:
        data = Path(png).read_bytes() if not isinstance(png, bytes) else png
        encoded = base64.b64encode(data).decode("ascii")
        self.parts.append(
            f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{encoded}"/>'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )

    def code(self, text: str) -> None:
        self.parts.append(f"<pre>{html.escape(text)}</pre>")

    def render(self) -> str:
        body = "\n".join(self.parts)
        return (
            '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"/>'
            f"<title>{html.escape(self.title)}</title><style>{_STYLE}</style></head>\n"
            f"<body><h1>{html.escape(self.title)}</h1>\n{body}\n</body></html>\n"
        )
