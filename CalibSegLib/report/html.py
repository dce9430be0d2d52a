"""A small builder for one self-contained HTML file (inline CSS, images as data URIs)."""

from __future__ import annotations

import base64
import html
import io
import os

from CalibSegLib.io import atomic_path

_CSS = """
body{font-family:-apple-system,'Segoe UI',Roboto,Helvetica,Arial,sans-serif;margin:0;
 background:#f5f6f8;color:#1d2330;line-height:1.45}
header{background:#1d2b45;color:#fff;padding:22px 40px}
header h1{margin:0;font-size:26px}header p{margin:6px 0 0;opacity:.85}
main{max-width:1180px;margin:0 auto;padding:10px 40px 60px}
section{background:#fff;border-radius:8px;padding:18px 24px;margin:18px 0;
 box-shadow:0 1px 3px rgba(0,0,0,.08)}
h2{font-size:19px;margin:0 0 10px;color:#1d2b45}h3{font-size:15px;margin:16px 0 6px}
table{border-collapse:collapse;font-size:13px;margin:8px 0}
th,td{border-bottom:1px solid #e3e6eb;padding:5px 10px;text-align:right}
th:first-child,td:first-child{text-align:left}th{background:#f0f2f6}
.note{color:#5a6375;font-size:13px}.warn{color:#9b2c2c;font-weight:600}
.ok{color:#22693a;font-weight:600}.grid{display:flex;flex-wrap:wrap;gap:14px}
.card{border:1px solid #e3e6eb;border-radius:6px;padding:10px 14px;flex:1 1 420px}
img{max-width:100%;height:auto}dl{display:grid;grid-template-columns:170px 1fr;gap:3px 12px;
 font-size:13px;margin:0}dt{color:#5a6375}dd{margin:0}
.kpi{display:inline-block;background:#eef2fb;border-radius:6px;padding:6px 12px;margin:3px;
 font-size:13px}
"""


def figure_data_uri(fig, dpi: int = 100) -> str:
    """A matplotlib Figure as a PNG data URI."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def esc(value) -> str:
    """HTML-escaped text of ``value``."""
    return html.escape(str(value))


def fmt(value, digits: int = 3) -> str:
    """Numbers with ``digits`` decimals; NaN/None as an en dash."""
    if value is None:
        return "–"
    if isinstance(value, (bool, int)) or (hasattr(value, "dtype") and value.dtype.kind in "iu"):
        return esc(value)
    try:
        number = float(value)
    except (TypeError, ValueError):
        return esc(value)
    if number != number:
        return "–"
    return f"{number:.{digits}f}"


class HtmlReport:
    """Collects sections and writes one HTML file atomically."""

    def __init__(self, title: str, subtitle: str = "") -> None:
        self.title = title
        self.subtitle = subtitle
        self.sections: list[str] = []

    def section(self, title: str, body: str) -> None:
        """Append a section with heading ``title`` and the HTML ``body``."""
        self.sections.append(f"<section><h2>{esc(title)}</h2>{body}</section>")

    @staticmethod
    def table(header: list[str], rows: list[list], digits: int = 3) -> str:
        """An HTML table; numbers shown with ``digits`` significant digits."""
        head = "".join(f"<th>{esc(h)}</th>" for h in header)
        body = "".join(
            "<tr>" + "".join(f"<td>{fmt(v, digits) if not isinstance(v, str) else esc(v)}</td>"
                             for v in row) + "</tr>" for row in rows)
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

    @staticmethod
    def image(uri: str, alt: str) -> str:
        """An ``<img>`` element for ``uri`` (e.g. a data URI)."""
        return f'<img src="{uri}" alt="{esc(alt)}">'

    @staticmethod
    def definition_list(items: list[tuple[str, str]]) -> str:
        """An HTML definition list of ``(term, description)`` pairs."""
        return "<dl>" + "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in items) + "</dl>"

    def render(self) -> str:
        """The whole report as one HTML document."""
        return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
                f"<meta name='viewport' content='width=device-width, initial-scale=1'>"
                f"<title>{esc(self.title)}</title><style>{_CSS}</style></head><body>"
                f"<header><h1>{esc(self.title)}</h1><p>{esc(self.subtitle)}</p></header>"
                f"<main>{''.join(self.sections)}</main></body></html>")

    def write(self, path: str) -> str:
        """Write the report to ``path`` atomically; return ``path``."""
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
            fh.write(self.render())
        return path
