"""Drawing boxes on images (ground truth and detections), and ``detlab show``.

``draw_boxes`` is shared by ``show``, ``predict`` and the reports: one colour per
class (from matplotlib's ``tab20``), text ``"name"`` or ``"name 0.87"``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as nnf
from matplotlib import colormaps
from PIL import Image
from torchvision.utils import draw_bounding_boxes, make_grid

_TAB20 = [tuple(int(round(255 * c)) for c in colormaps["tab20"](i)[:3]) for i in range(20)]


def class_colour(label: int) -> tuple[int, int, int]:
    """The RGB colour of a class index (stable across images and runs)."""
    return _TAB20[(2 * int(label)) % 20 + (int(label) // 10) % 2]


def to_uint8(image: torch.Tensor) -> torch.Tensor:
    """``float [3, H, W]`` in 0..1 (or uint8) → ``uint8 [3, H, W]``; grayscale ``[1, H, W]`` is repeated."""
    if image.dtype != torch.uint8:
        image = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
    return image.expand(3, -1, -1) if image.shape[0] == 1 else image


def draw_boxes(image: torch.Tensor, boxes, labels, class_names: list[str], scores=None, width: int = 2) -> torch.Tensor:
    """Draw boxes with class-coloured outlines and ``"name score"`` captions.

    Args:
        image: ``float32 [3, H, W]`` in 0..1, or ``uint8 [3, H, W]``.
        boxes: ``[N, 4]`` xyxy absolute pixels of ``image`` (tensor or array).
        labels: ``[N]`` class indices in ``0..C-1``.
        class_names: ``C`` names.
        scores: optional ``[N]`` scores, shown with two decimals.
        width: outline width in pixels.

    Returns:
        ``uint8 [3, H, W]``.
    """
    img = to_uint8(image.cpu())
    boxes = torch.as_tensor(np.asarray(boxes, np.float32) if not torch.is_tensor(boxes) else boxes.detach().cpu().float()).reshape(-1, 4)
    labels = [int(v) for v in (labels.tolist() if hasattr(labels, "tolist") else labels)]
    if boxes.shape[0] == 0:
        return img
    names = [class_names[i] if 0 <= i < len(class_names) else str(i) for i in labels]
    if scores is not None:
        values = scores.tolist() if hasattr(scores, "tolist") else list(scores)
        names = [f"{n} {float(s):.2f}" for n, s in zip(names, values)]
    colours = [class_colour(i) for i in labels]
    return draw_bounding_boxes(img, boxes, labels=names, colors=colours, width=width)


def fit_tile(image: torch.Tensor, side: int) -> torch.Tensor:
    """Scale ``uint8 [3, H, W]`` to fit a ``side × side`` tile (aspect kept, black padding)."""
    h, w = image.shape[-2:]
    scale = side / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    small = nnf.interpolate(image[None].float(), size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)[0]
    tile = torch.zeros(3, side, side)
    tile[:, (side - nh) // 2:(side - nh) // 2 + nh, (side - nw) // 2:(side - nw) // 2 + nw] = small
    return tile.round().clamp(0, 255).to(torch.uint8)


def save_png(image: torch.Tensor, path: Path) -> None:
    """Write ``uint8 [3, H, W]`` as PNG."""
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(path)


def show_command(data: str, out: str, n: int = 8, split: str | None = None, images: str | None = None,
                 classes: str | None = None, tile: int = 320) -> int:
    """``detlab show DATA --out DIR``: ground truth drawn on ``n`` images spread over the dataset.

    Writes one PNG per image (``<stem>.png``; ``difficult`` boxes captioned so) and
    ``grid.png`` (all of them, ``tile`` px each). Returns 0.
    """
    from detlab.data.dataset import load_dataset

    ds = load_dataset(data, split=split, images=images, classes=classes)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    picks = np.unique(np.linspace(0, len(ds) - 1, num=max(1, min(n, len(ds)))).round().astype(int))
    tiles = []
    for i in picks:
        image, target = ds[int(i)]
        names = [f"{ds.class_names[c]}{' (difficult)' if d else ''}" for c, d in zip(target["labels"].tolist(), target["difficult"].tolist())]
        colours = [class_colour(c) for c in target["labels"].tolist()]
        drawn = draw_bounding_boxes(to_uint8(image), target["boxes"], labels=names, colors=colours, width=2) if names else to_uint8(image)
        path = out_dir / f"{Path(ds.records.images[int(i)].file).stem}.png"
        save_png(drawn, path)
        tiles.append(fit_tile(drawn, tile))
    grid = make_grid(torch.stack(tiles), nrow=min(4, len(tiles)), padding=4)
    save_png(grid, out_dir / "grid.png")
    print(f"wrote {len(tiles)} images and {out_dir / 'grid.png'}")
    return 0
