"""Pictures of the maps: the image beside its heatmap overlay, a grid, and an HTML gallery."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont
from pytorch_grad_cam.utils.image import show_cam_on_image

# Small images (the synthetic set is 64 px) are scaled up so the caption stays readable.
MIN_PANEL_SIZE = 192
CAPTION_HEIGHT = 34
MASK_OUTLINE = (255, 255, 255)


@dataclass
class Sample:
    """One explained image: the region the model saw, at the image's own resolution."""

    image: Image.Image
    cam: np.ndarray  # (H, W) in [0, 1], upsampled to the image
    true_label: str | None  # None when unknown (task=predict on unlabelled images)
    prob_fake: float
    explained: str
    name: str
    mask: np.ndarray | None = None  # (H, W) bool, the manipulated region when known


def panel(sample: Sample) -> Image.Image:
    """The image beside its overlay (mask outlined when known), captioned with the true label,
    p(fake) and the class the map explains."""
    rgb = np.asarray(sample.image.convert("RGB"), dtype=np.float32) / 255
    overlay = Image.fromarray(show_cam_on_image(rgb, sample.cam, use_rgb=True, image_weight=0.5))
    if sample.mask is not None:
        overlay = _outline(overlay, sample.mask)
    side = max(MIN_PANEL_SIZE, sample.image.height)
    width = round(sample.image.width * side / sample.image.height)
    left = sample.image.convert("RGB").resize((width, side), Image.Resampling.NEAREST)
    right = overlay.resize((width, side), Image.Resampling.NEAREST)
    canvas = Image.new("RGB", (2 * width, side + CAPTION_HEIGHT), (0, 0, 0))
    canvas.paste(left, (0, 0))
    canvas.paste(right, (width, 0))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    colour = {"fake": (255, 90, 90), "real": (120, 220, 120)}.get(sample.true_label, (200, 200, 200))
    truth = sample.true_label or "unknown"
    draw.text((4, side + 2), f"true: {truth}   p(fake)={sample.prob_fake:.3f}", fill=colour, font=font)
    draw.text((4, side + 17), f"map explains: {sample.explained}", fill=(230, 230, 230), font=font)
    return canvas


def _outline(image: Image.Image, mask: np.ndarray) -> Image.Image:
    inside = Image.fromarray(mask.astype(np.uint8) * 255)
    edge = np.asarray(inside) > np.asarray(inside.filter(ImageFilter.MinFilter(3)))
    pixels = np.array(image)
    pixels[edge] = MASK_OUTLINE
    return Image.fromarray(pixels)


def grid(panels: list[Image.Image], columns: int = 4) -> Image.Image:
    """Panels tiled row by row (all the same size here, since images share the model's crop)."""
    width = max(p.width for p in panels)
    height = max(p.height for p in panels)
    rows = -(-len(panels) // columns)
    sheet = Image.new("RGB", (min(columns, len(panels)) * width, rows * height), (0, 0, 0))
    for index, image in enumerate(panels):
        sheet.paste(image, ((index % columns) * width, (index // columns) * height))
    return sheet


def write_gallery(out_dir: Path, files: list[str], panels: list[Image.Image], samples: list[Sample],
                  metrics: dict | None, title: str) -> Path:  # fmt: skip
    """``index.html``: the metrics, then every panel with its caption, in one self-contained page (the
    panels embedded, as every report is: it can be mailed or archived alone). Each caption names the
    panel's PNG beside it."""
    from deepfake.reports import html as page

    figures = []
    for file, image, sample in zip(files, panels, samples):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        caption = f"{file}: true {sample.true_label}, p(fake) {sample.prob_fake:.3f}, explains {sample.explained}"
        figures.append(page.image(buffer.getvalue(), caption))
    report = (
        f"<pre>{page.escape(json.dumps(metrics, indent=2))}</pre>" if metrics else page.paragraph("(cam.metrics=false)")
    )
    document = page.document(
        title,
        "Left: the image as the model saw it (central crop). Right: the map over it; a white outline marks "
        "the ground-truth manipulated region when the dataset has one.",
        page.section("Metrics (cam/metrics.json)", report),
        page.section("Overlays", *figures),
    )
    return page.write_document(out_dir / "index.html", document)
