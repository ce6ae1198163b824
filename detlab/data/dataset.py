"""``DetectionDataset``: records → (image, target) in the data contract; ``load_dataset``;
``load_ground_truth`` (annotations only, for scoring); ``collate``.

Legend: ``N`` boxes of one image, ``H, W`` the decoded image's height and width.

Images are decoded lazily in ``__getitem__`` (nothing decoded is kept), EXIF
orientation applied, and every PIL mode (grayscale, palette, RGBA, CMYK, 16-bit)
turned into RGB ``float32`` in 0..1.

EXIF and the box frame (decided here, once): a record's ``width``/``height`` is the
size its annotation declares. When that equals the image as displayed (EXIF applied)
the boxes are used as they are. When it equals only the raw, un-rotated pixel grid
(EXIF orientation 5–8, i.e. a 90° turn, which swaps width and height) the annotation
tool ignored EXIF, so the boxes are turned with the image and land on the object.
For orientations 2–4 (flips, 180°) both frames have the same size; the boxes are then
taken to be in the displayed frame, which is what EXIF-aware tools (and
``detlab convert``) write.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset
from torchvision import tv_tensors

from detlab.data.records import ImageRecord, Records
from detlab.errors import DataError

EXIF_ORIENTATION = 0x0112


def pil_to_rgb_float(im: Image.Image) -> torch.Tensor:
    """Any PIL image → ``float32 [3, H, W]`` RGB in 0..1.

    16-bit and 32-bit integer modes (``I;16*``, ``I``) are scaled by 65535, float
    mode ``F`` is clipped to 0..1; alpha is dropped (colour kept as stored); palette,
    grayscale, CMYK and the rest go through PIL's RGB conversion.
    """
    if im.mode.startswith("I") or im.mode == "F":
        arr = np.asarray(im, dtype=np.float32)
        arr = np.clip(arr / 65535.0, 0, 1) if im.mode != "F" else np.clip(arr, 0, 1)
        return torch.from_numpy(np.ascontiguousarray(arr)).expand(3, *arr.shape).contiguous()
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode != "RGB":
        im = im.convert("RGB")
    arr = np.asarray(im)  # [H, W, 3] uint8
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)


def read_image(path: Path) -> tuple[torch.Tensor, tuple[int, int], int]:
    """Decode an image with EXIF orientation applied.

    Args:
        path: the image file.

    Returns:
        ``(image, raw_size, orientation)``: image ``float32 [3, H, W]`` RGB 0..1 as
        displayed; ``raw_size`` ``(W, H)`` of the stored pixel grid before EXIF;
        the EXIF orientation tag (1 when absent).

    Raises:
        DataError: missing, unreadable or truncated file (names it and says to run ``detlab check``).
    """
    from detlab.data.checks import too_many_pixels

    try:
        with Image.open(path) as im:
            raw_size = im.size
            if (huge := too_many_pixels(raw_size)) is not None:
                raise DataError(f"{path}: {huge}")
            orientation = int(im.getexif().get(EXIF_ORIENTATION, 1) or 1)
            im.load()
            shown = ImageOps.exif_transpose(im) if orientation != 1 else im
            return pil_to_rgb_float(shown), raw_size, orientation
    except FileNotFoundError:
        raise DataError(
            f"{path}: image file not found — restore it or run `detlab check` to list every missing file"
        ) from None
    except Image.DecompressionBombError:
        raise DataError(f"{path}: {too_many_pixels(None)}") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise DataError(
            f"{path}: cannot decode image ({e}) — replace it or run `detlab check` to find every bad file"
        ) from None


def exif_boxes(boxes: np.ndarray, orientation: int, raw_w: int, raw_h: int) -> np.ndarray:
    """Move boxes from the raw pixel grid to the EXIF-displayed frame.

    Args:
        boxes: ``float32 [N, 4]`` xyxy continuous pixels in the raw ``raw_w × raw_h`` frame.
        orientation: EXIF orientation tag 1..8 (what ``ImageOps.exif_transpose`` undoes).
        raw_w, raw_h: the raw image size.

    Returns:
        ``float32 [N, 4]`` xyxy in the displayed frame.
    """
    W, H = float(raw_w), float(raw_h)
    x, y = boxes[:, [0, 2]], boxes[:, [1, 3]]  # [N, 2] each: the two corners
    maps = {
        2: (W - x, y),
        3: (W - x, H - y),
        4: (x, H - y),
        5: (y, x),
        6: (H - y, x),
        7: (H - y, W - x),
        8: (y, W - x),
    }
    if orientation not in maps:
        return boxes
    nx, ny = maps[orientation]
    return np.stack([nx.min(1), ny.min(1), nx.max(1), ny.max(1)], 1).astype(np.float32)


def boxes_in_display_frame(record: ImageRecord, raw_size: tuple[int, int], orientation: int) -> np.ndarray:
    """A record's boxes in the displayed frame (see the module docstring for the rule)."""
    raw_w, raw_h = raw_size
    turned = orientation in (5, 6, 7, 8) and raw_w != raw_h
    if turned and (record.width, record.height) == (raw_w, raw_h):
        return exif_boxes(record.boxes, orientation, raw_w, raw_h)
    return record.boxes


class DetectionDataset(Dataset):
    """Images and boxes in the data contract.

    ``ds[i] -> (image, target)``: image ``float32 [3, H, W]`` RGB 0..1 (EXIF applied);
    target ``{"boxes": float32 [N, 4] xyxy abs px, "labels": int64 [N] in 0..C-1,
    "difficult": bool [N], "iscrowd": bool [N], "image_id": int, "orig_size": (H, W)}``
    where ``orig_size`` is the decoded image's size before ``transforms``.

    Args:
        records: the annotations (from :func:`load_dataset` or a format reader).
        transforms: a callable ``(image, target) -> (image, target)`` on tv_tensors,
            e.g. from :func:`detlab.data.transforms.build_transforms`.

    Attributes:
        records, class_names, num_classes, source_ids.
    """

    def __init__(self, records: Records, transforms: Callable | None = None) -> None:
        self.records = records
        self.transforms = transforms

    @property
    def class_names(self) -> list[str]:
        return self.records.class_names

    @property
    def num_classes(self) -> int:
        return self.records.num_classes

    @property
    def source_ids(self) -> list:
        return self.records.source_ids

    def __len__(self) -> int:
        return len(self.records.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict]:
        rec = self.records.images[index]
        image, raw_size, orientation = read_image(rec.file)
        h, w = image.shape[-2:]
        boxes = boxes_in_display_frame(rec, raw_size, orientation)
        target = {
            "boxes": tv_tensors.BoundingBoxes(
                torch.from_numpy(np.ascontiguousarray(boxes, np.float32)).reshape(-1, 4),
                format="XYXY",
                canvas_size=(h, w),
            ),
            "labels": torch.from_numpy(np.asarray(rec.labels, np.int64)),
            "difficult": torch.from_numpy(np.asarray(rec.difficult, bool)),
            "iscrowd": torch.from_numpy(np.asarray(rec.iscrowd, bool)),
            "image_id": int(rec.image_id),
            "orig_size": (int(h), int(w)),
        }
        image = tv_tensors.Image(image)
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return _plain(image), {k: _plain(v) for k, v in target.items()}


def _plain(x):
    """tv_tensors → plain tensors, so the contract never leaks torchvision subclasses."""
    return x.as_subclass(torch.Tensor) if isinstance(x, torch.Tensor) else x


def collate(batch: list[tuple[torch.Tensor, dict]]) -> tuple[list[torch.Tensor], list[dict]]:
    """Batch for a DataLoader: images stay a list (sizes differ), targets a list of dicts."""
    images, targets = zip(*batch) if batch else ((), ())
    return list(images), list(targets)


def targets_to(targets: list[dict], device: torch.device) -> list[dict]:
    """A batch's targets with their tensors moved to ``device`` (ids and sizes stay as they are)."""
    return [{k: (v.to(device) if torch.is_tensor(v) else v) for k, v in t.items()} for t in targets]


def load_dataset(
    path: str | Path,
    split: str | None = None,
    images: str | Path | None = None,
    classes: str | list[str] | None = None,
    check: bool = True,
    transforms: Callable | None = None,
) -> DetectionDataset:
    """Read a dataset of any supported format into a :class:`DetectionDataset`.

    Args:
        path: dataset path; may carry ``:split`` and ``+`` joins (see ``data/formats``).
        split: split name when ``path`` does not carry one.
        images: COCO image folder, when not found from the JSON's location.
        classes: class list (names, comma string or text file), order kept.
        check: run the load-time checks (image headers, sizes, boxes): fix what is safe
            (clip to the image), skip what is not, print the counts to stderr.
        transforms: passed to :class:`DetectionDataset`.

    Returns:
        The dataset; boxes xyxy absolute pixels, labels ``0..C-1``.

    Raises:
        DataError: the path cannot be read, or nothing usable is left.
    """
    from detlab.data.checks import print_load_summary, validate_records
    from detlab.data.formats import read_records

    records = read_records(path, split=split, images=images, classes=classes)
    if check:
        result = validate_records(records, decode=False)
        print_load_summary(records, result, str(path))
    if not records.images:
        raise DataError(f"{path}: no usable images — run `detlab check {path}` to see why")
    return DetectionDataset(records, transforms)


def load_ground_truth(
    path: str | Path,
    split: str | None = None,
    images: str | Path | None = None,
    classes: str | list[str] | None = None,
    verbose: bool = True,
) -> Records:
    """Read a dataset's annotations as the ground truth a results file is scored against.

    No image is decoded and none is needed where the annotations declare sizes (COCO
    ``width``/``height``, VOC ``<size>``; YOLO labels need the header for their pixel
    size). A missing or unreadable image file is reported and its boxes stay in the
    ground truth; boxes are kept as annotated, not clipped (see
    :func:`detlab.data.checks.validate_annotations`).

    Args:
        path, split, images, classes: as :func:`load_dataset`.
        verbose: print the problems and counts to stderr.

    Returns:
        Records; boxes xyxy absolute pixels, labels ``0..C-1``.

    Raises:
        DataError: the path cannot be read, or it holds no image record at all.
    """
    from detlab.data.checks import print_load_summary, validate_annotations
    from detlab.data.formats import read_records

    records = read_records(path, split=split, images=images, classes=classes)
    result = validate_annotations(records)
    if verbose:
        print_load_summary(records, result, str(path))
    if not records.images:
        raise DataError(f"{path}: no image records in the annotations — run `detlab check {path}` to see why")
    return records
