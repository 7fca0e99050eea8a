"""Building blocks for self-contained HTML reports.

A report is one file a user can mail or archive: every image is embedded as a data URI, the style is
inline, there is no script and no external URL, and every string from data (paths, run names, config
values) is escaped, because file names and CSV cells are user input.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Iterable, Sequence
from pathlib import Path

from deepfake.tracking.checkpoint import atomic_write_text

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 1100px;
       color: #1d1d1f; background: #fff; line-height: 1.45; }
h1 { font-size: 1.6rem; margin-bottom: .2rem; } h2 { font-size: 1.2rem; margin-top: 2rem;
     border-bottom: 1px solid #ddd; padding-bottom: .2rem; }
.meta { color: #555; font-size: .9rem; }
table { border-collapse: collapse; margin: .6rem 0; font-size: .9rem; }
th, td { border: 1px solid #ccc; padding: .25rem .6rem; text-align: left; vertical-align: top; }
th { background: #f3f3f5; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { display: inline-block; margin: .5rem 1rem .5rem 0; vertical-align: top; }
figure img { max-width: 100%; border: 1px solid #eee; } figcaption { font-size: .85rem; color: #444; }
.pass { color: #0a7d32; font-weight: 600; } .warn { color: #a86400; font-weight: 600; }
.fail { color: #b00020; font-weight: 600; }
"""


MISSING = "n/a"  # how a table shows an undefined figure


def escape(value: object) -> str:
    """Any value as text safe inside HTML elements and attribute values."""
    return html.escape(str(value), quote=True)


def png_data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def figure_png(fig, dpi: int = 110) -> bytes:
    """A matplotlib figure as PNG bytes; the figure is closed (reports draw many). A figure laid out
    by a layout engine (``layout="constrained"``) already fits its labels: cropping it to a tight
    box would draw it twice (a fifth of a run's report time here)."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png", dpi=dpi, bbox_inches=None if fig.get_layout_engine() else "tight")
    finally:
        plt.close(fig)
    return buffer.getvalue()


def image(png: bytes, caption: str = "", *, width: int | None = None) -> str:
    """An embedded PNG with an escaped caption (also its alt text)."""
    size = f' width="{int(width)}"' if width else ""
    tag = f'<img src="{png_data_uri(png)}" alt="{escape(caption)}"{size}>'
    return f"<figure>{tag}<figcaption>{escape(caption)}</figcaption></figure>" if caption else tag


def table(columns: Sequence[str], rows: Iterable[Sequence[object]], *, fmt=None) -> str:
    """A table with escaped cells; numbers right-aligned and passed through ``fmt`` when given; None, an
    undefined figure (AUC on one class), reads ``n/a`` as in the model card and the log, not blank."""
    head = "".join(f"<th>{escape(c)}</th>" for c in columns)
    body = []
    for row in rows:
        cells = []
        for value in row:
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                cells.append(f'<td class="num">{escape(fmt(value) if fmt else value)}</td>')
            else:
                cells.append(f"<td>{escape(MISSING if value is None else value)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def section(title: str, *parts: str) -> str:
    """A titled section; ``parts`` are HTML fragments already built by the helpers above."""
    return f"<section><h2>{escape(title)}</h2>{''.join(parts)}</section>"


def paragraph(text: str, css_class: str | None = None) -> str:
    attr = f' class="{escape(css_class)}"' if css_class else ""
    return f"<p{attr}>{escape(text)}</p>"


def document(title: str, subtitle: str, *sections: str) -> str:
    """The whole page: no script, no external resource; the CSP forbids loading any if one slipped in."""
    csp = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{csp}">'
        f"<title>{escape(title)}</title><style>{STYLE}</style></head><body>"
        f'<h1>{escape(title)}</h1><p class="meta">{escape(subtitle)}</p>{"".join(sections)}</body></html>\n'
    )


def write_document(path: str | Path, page: str) -> Path:
    """Written atomically: a reader never sees half a report."""
    path = Path(path)
    atomic_write_text(path, page)
    return path
