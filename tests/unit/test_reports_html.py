"""The shared report building blocks: escaping, embedding, and a page that renders in Chromium."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
from browser import render  # noqa: E402
from PIL import Image  # noqa: E402

from deepfake.reports import html  # noqa: E402


def test_strings_from_data_are_escaped():
    hostile = '<script>alert("x")</script> & "quoted" \'single\''
    page = html.document(hostile, hostile, html.section(hostile, html.table([hostile], [[hostile, 1.5]])))
    assert "<script>" not in page
    assert "&lt;script&gt;" in page and "&amp;" in page and "&quot;" in page


def test_table_formats_numbers_and_keeps_text():
    out = html.table(["name", "auc"], [["a<b", 0.123456], ["none", None]], fmt=lambda v: f"{v:.3f}")
    assert '<td class="num">0.123</td>' in out and "a&lt;b" in out


def test_an_undefined_figure_reads_n_a_not_blank():
    """AUC on a one-class set is None: report.html showed an empty cell where the card and log say n/a."""
    from deepfake.evaluation.report import _num

    out = html.table(["set", "auc", "ap"], [["one class", None, 0.5]], fmt=_num)
    assert "<td>n/a</td>" in out and "<td></td>" not in out and '<td class="num">0.5000</td>' in out


def test_figure_embedded_as_data_uri():
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1])
    png = html.figure_png(fig)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert html.image(png, "roc").count("data:image/png;base64,") == 1


def test_a_constrained_figure_keeps_its_size_and_its_labels_inside_it():
    fig, ax = plt.subplots(figsize=(5, 4), layout="constrained")
    ax.plot([0, 1], [0, 1])
    for set_text in (ax.set_xlabel, ax.set_ylabel, ax.set_title):  # at 20 pt, past the edges without a layout
        set_text("false-positive rate", fontsize=20)
    png = html.figure_png(fig, dpi=100)
    assert Image.open(io.BytesIO(png)).size == (500, 400)  # not cropped (nor drawn twice to crop it)
    labelled = ax.get_tightbbox()  # the axes with their ticks, labels and title, as drawn
    assert fig.bbox.contains(*labelled.p0) and fig.bbox.contains(*labelled.p1)


@pytest.mark.slow
def test_page_renders_in_chromium_without_network(tmp_path):
    fig, ax = plt.subplots()
    ax.bar(["real", "fake"], [3, 5])
    page = html.document(
        "report", "subtitle",
        html.section("figures", html.image(html.figure_png(fig), "bars")),
        # A reference to the network that the page's CSP and the test's router both stop.
        '<img src="https://example.invalid/pixel.png" alt="remote">',
    )  # fmt: skip
    path = html.write_document(tmp_path / "report.html", page)
    shown = render(path, tmp_path / "shot.png")
    assert not shown.is_blank()
    assert "figures" in shown.text
    embedded = [img for img in shown.images if img["src"].startswith("data:image/png")]
    assert len(embedded) == 1 and embedded[0]["width"] > 0
    # The remote image is blocked before any request leaves (CSP), so it is broken and never fetched.
    assert [img["src"] for img in shown.broken_images] == ["https://example.invalid/pixel."]
    assert shown.requests == []
