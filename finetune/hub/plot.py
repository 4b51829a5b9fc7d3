"""The loss curve drawn for the model card, with Pillow (no plotting library needed)."""

from __future__ import annotations

import logging
import math
from typing import Any

logger = logging.getLogger(__name__)


def loss_curve_png(metrics: list[dict[str, Any]]) -> bytes | None:
    """The training (and evaluation) loss against the step as a PNG, drawn with PIL.

    Returns None when fewer than two losses were logged, or Pillow is not installed.
    """
    train = [(r["step"], r["loss"]) for r in metrics if "loss" in r and "step" in r]
    evals = [(r["step"], r["eval_loss"]) for r in metrics if "eval_loss" in r and "step" in r]
    if len(train) + len(evals) < 2:
        return None
    from io import BytesIO

    try:
        from PIL import Image, ImageDraw
    except ImportError:  # Pillow is optional: the card keeps the loss table
        logger.warning("Pillow is not installed: the model card gets no loss_curve.png")
        return None

    width, height, left, right, top, bottom = 800, 460, 70, 20, 56, 50
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    font = _font(14)
    points = train + evals
    x0, x1 = min(p[0] for p in points), max(p[0] for p in points)
    y0, y1 = min(p[1] for p in points), max(p[1] for p in points)
    pad = (y1 - y0) * 0.05 or 0.5
    y0, y1 = y0 - pad, y1 + pad
    x1 = x1 if x1 > x0 else x0 + 1

    def xy(step: float, loss: float) -> tuple[float, float]:
        x = left + (step - x0) / (x1 - x0) * (width - left - right)
        y = top + (y1 - loss) / (y1 - y0) * (height - top - bottom)
        return x, y

    for value in _ticks(y0, y1):
        _, y = xy(x0, value)
        draw.line([(left, y), (width - right, y)], fill=(225, 225, 225))
        draw.text((left - 8, y), f"{value:g}", fill="black", font=font, anchor="rm")
    for value in _ticks(x0, x1):
        x, _ = xy(value, y0)
        draw.line([(x, top), (x, height - bottom)], fill=(235, 235, 235))
        draw.text((x, height - bottom + 8), f"{value:g}", fill="black", font=font, anchor="mt")
    draw.rectangle([(left, top), (width - right, height - bottom)], outline="black")
    series = [(train, (31, 119, 180), "training loss"), (evals, (255, 127, 14), "evaluation loss")]
    for i, (values, color, label) in enumerate(s for s in series if s[0]):
        line = [xy(*p) for p in values]
        if len(line) > 1:
            draw.line(line, fill=color, width=2)
        for x, y in line:
            draw.ellipse([(x - 2.5, y - 2.5), (x + 2.5, y + 2.5)], fill=color)
        y = 14 + 18 * i
        draw.line([(width - 190, y), (width - 165, y)], fill=color, width=3)
        draw.text((width - 158, y), label, fill="black", font=font, anchor="lm")
    draw.text((left, 24), "Loss", fill="black", font=_font(16), anchor="lm")
    draw.text(((width + left) / 2, height - 12), "step", fill="black", font=font, anchor="ms")
    out = BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def _font(size: int) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ValueError, OSError):  # Pillow without FreeType: the bitmap font
        return ImageFont.load_default()


def _ticks(low: float, high: float, count: int = 6) -> list[float]:
    """Round tick values (1, 2, 2.5 or 5 times a power of ten) inside [low, high]."""
    raw = (high - low) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.ceil(low / step) * step
    return [round(first + i * step, 10) for i in range(int((high - first) / step) + 1)]
