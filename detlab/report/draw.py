"""Drawing boxes on images (ground truth and detections), and ``detlab show``.

``draw_boxes`` is shared by ``show``, ``predict`` and the reports, so a box looks the same
everywhere: one colour per class (matplotlib's ``tab20``); a caption ``"name"`` or
``"name 0.87"`` in DejaVu Sans (shipped with matplotlib) on a filled box of the class
colour, in black or white, whichever reads better on it; font size and line width scale
with the image, so a 4000 px photo and a 128 px thumbnail are both readable. Ground
truth is drawn dashed and predictions solid, so the two can be told apart on one image.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as nnf
from matplotlib import colormaps, font_manager
from PIL import Image, ImageDraw, ImageFont
from torchvision.utils import make_grid

_TAB20 = [tuple(int(round(255 * c)) for c in colormaps["tab20"](i)[:3]) for i in range(20)]


def class_colour(label: int) -> tuple[int, int, int]:
    """The RGB colour of a class index (stable across images and runs)."""
    return _TAB20[(2 * int(label)) % 20 + (int(label) // 10) % 2]


def to_uint8(image: torch.Tensor) -> torch.Tensor:
    """``float [3, H, W]`` in 0..1 (or uint8) → ``uint8 [3, H, W]``; grayscale ``[1, H, W]`` is repeated."""
    if image.dtype != torch.uint8:
        image = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
    return image.expand(3, -1, -1) if image.shape[0] == 1 else image


@lru_cache(maxsize=32)
def font(size: int) -> ImageFont.FreeTypeFont:
    """DejaVu Sans at ``size`` px (matplotlib ships it, so it is there wherever detlab is)."""
    return ImageFont.truetype(font_manager.findfont("DejaVu Sans"), size)


def text_size(height: int, width: int) -> int:
    """Caption font size for an image: about 2.2 % of the shorter side, 10 px at least."""
    return max(10, round(0.022 * min(height, width)))


def line_width(height: int, width: int) -> int:
    """Outline width for an image: 1 px up to ~300 px, then growing with the shorter side."""
    return max(1, round(min(height, width) / 300))


def _ink(colour: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black or white text, whichever contrasts more with ``colour`` (relative luminance)."""
    r, g, b = (c / 255 for c in colour)
    return (0, 0, 0) if 0.2126 * r + 0.7152 * g + 0.0722 * b > 0.5 else (255, 255, 255)


def _dashed_rectangle(draw: ImageDraw.ImageDraw, box, colour, width: int) -> None:
    x1, y1, x2, y2 = box
    dash = 4 * width + 2
    for a, b, horizontal, fixed in (
        (x1, x2, True, y1),
        (x1, x2, True, y2),
        (y1, y2, False, x1),
        (y1, y2, False, x2),
    ):
        for start in np.arange(a, b, 2 * dash):
            end = min(start + dash, b)
            points = [(start, fixed), (end, fixed)] if horizontal else [(fixed, start), (fixed, end)]
            draw.line(points, fill=colour, width=width)


def draw_boxes(
    image: torch.Tensor,
    boxes,
    labels,
    class_names: list[str],
    scores=None,
    width: int | None = None,
    ground_truth: bool = False,
    marks=None,
) -> torch.Tensor:
    """Draw boxes with class-coloured outlines and readable captions (see the module docstring).

    Args:
        image: ``float32 [3, H, W]`` in 0..1, or ``uint8 [3, H, W]``.
        boxes: ``[N, 4]`` xyxy absolute pixels of ``image`` (tensor or array).
        labels: ``[N]`` class indices in ``0..C-1``.
        class_names: ``C`` names.
        scores: optional ``[N]`` scores, shown with two decimals.
        width: outline width in pixels (default scaled to the image).
        ground_truth: draw dashed outlines (ground truth) instead of solid ones (predictions).
        marks: optional ``[N]`` extra caption words (e.g. ``"difficult"``), ``""`` for none.

    Returns:
        ``uint8 [3, H, W]``.
    """
    img = to_uint8(image.cpu())
    boxes = np.asarray(boxes.detach().cpu().float() if torch.is_tensor(boxes) else boxes, np.float64).reshape(
        -1, 4
    )
    labels = [int(v) for v in (labels.tolist() if hasattr(labels, "tolist") else labels)]
    if boxes.shape[0] == 0:
        return img
    names = [class_names[i] if 0 <= i < len(class_names) else str(i) for i in labels]
    if scores is not None:
        values = scores.tolist() if hasattr(scores, "tolist") else list(scores)
        names = [f"{n} {float(s):.2f}" for n, s in zip(names, values)]
    if marks is not None:
        names = [f"{n} ({m})" if m else n for n, m in zip(names, marks)]
    h, w = img.shape[-2:]
    width = width or line_width(h, w)
    face = font(text_size(h, w))
    canvas = Image.fromarray(img.permute(1, 2, 0).numpy().copy())
    draw = ImageDraw.Draw(canvas)
    order = np.argsort(
        scores if scores is not None else np.zeros(len(labels)), kind="stable"
    )  # best drawn last, on top
    for i in order.tolist():
        colour = class_colour(labels[i])
        x1, y1, x2, y2 = boxes[i].tolist()
        if ground_truth:
            _dashed_rectangle(draw, (x1, y1, x2, y2), colour, width)
        else:
            draw.rectangle((x1, y1, x2, y2), outline=colour, width=width)
        left, top, right, bottom = draw.textbbox((0, 0), names[i], font=face)
        tw, th = right - left, bottom - top
        pad = max(1, th // 5)
        ty = y1 - th - 2 * pad if y1 - th - 2 * pad >= 0 else y1  # above the box, inside it at the top edge
        tx = min(max(x1, 0), max(w - tw - 2 * pad, 0))
        draw.rectangle((tx, ty, tx + tw + 2 * pad, ty + th + 2 * pad), fill=colour)
        draw.text((tx + pad - left, ty + pad - top), names[i], fill=_ink(colour), font=face)
    return torch.from_numpy(np.asarray(canvas).copy()).permute(2, 0, 1)


def caption(image: torch.Tensor, text: str) -> torch.Tensor:
    """``uint8 [3, H, W]`` with ``text`` (a file name) in a dark band at the bottom, for grid tiles."""
    h, w = image.shape[-2:]
    canvas = Image.fromarray(image.permute(1, 2, 0).numpy().copy())
    draw = ImageDraw.Draw(canvas)
    face = font(max(10, round(0.045 * min(h, w))))
    left, top, right, bottom = draw.textbbox((0, 0), text, font=face)
    band = bottom - top + 6
    draw.rectangle((0, h - band, w, h), fill=(20, 20, 20))
    draw.text((4 - left, h - band + 3 - top), text, fill=(255, 255, 255), font=face)
    return torch.from_numpy(np.asarray(canvas).copy()).permute(2, 0, 1)


def fit_tile(image: torch.Tensor, side: int) -> torch.Tensor:
    """Scale ``uint8 [3, H, W]`` to fit a ``side × side`` tile (aspect kept, black padding)."""
    h, w = image.shape[-2:]
    scale = side / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    small = nnf.interpolate(
        image[None].float(), size=(nh, nw), mode="bilinear", align_corners=False, antialias=True
    )[0]
    tile = torch.zeros(3, side, side)
    tile[:, (side - nh) // 2 : (side - nh) // 2 + nh, (side - nw) // 2 : (side - nw) // 2 + nw] = small
    return tile.round().clamp(0, 255).to(torch.uint8)


def save_png(image: torch.Tensor, path: Path) -> None:
    """Write ``uint8 [3, H, W]`` as PNG."""
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(path)


def show_command(
    data: str,
    out: str,
    n: int = 8,
    split: str | None = None,
    images: str | None = None,
    classes: str | None = None,
    tile: int = 320,
) -> int:
    """``detlab show DATA --out DIR``: ground truth drawn on ``n`` images spread over the dataset.

    Writes one PNG per image (``<stem>.png``; ground truth dashed, ``difficult`` boxes
    captioned so) and ``grid.png`` (all of them, ``tile`` px each, file names under each tile).
    Returns 0.
    """
    from detlab.data.dataset import load_dataset

    ds = load_dataset(data, split=split, images=images, classes=classes)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    picks = np.unique(np.linspace(0, len(ds) - 1, num=max(1, min(n, len(ds)))).round().astype(int))
    tiles = []
    for i in picks:
        image, target = ds[int(i)]
        marks = ["difficult" if d else "" for d in target["difficult"].tolist()]
        drawn = draw_boxes(
            image, target["boxes"], target["labels"], ds.class_names, ground_truth=True, marks=marks
        )
        name = Path(ds.records.images[int(i)].file).name
        save_png(drawn, out_dir / f"{Path(name).stem}.png")
        # drawn again at tile size, so captions keep a readable size instead of shrinking with the image
        small, boxes = (
            fit_tile(to_uint8(image), tile),
            target["boxes"].numpy() * (tile / max(image.shape[-2:])),
        )
        offset = [
            (tile - round(image.shape[-1] * tile / max(image.shape[-2:]))) // 2,
            (tile - round(image.shape[-2] * tile / max(image.shape[-2:]))) // 2,
        ]
        tile_drawn = draw_boxes(
            small,
            boxes + np.array(offset * 2),
            target["labels"],
            ds.class_names,
            ground_truth=True,
            marks=marks,
        )
        tiles.append(caption(tile_drawn, name))
    grid = make_grid(torch.stack(tiles), nrow=min(4, len(tiles)), padding=4)
    save_png(grid, out_dir / "grid.png")
    print(f"wrote {len(tiles)} images and {out_dir / 'grid.png'}")
    return 0
