"""A corpus of real-world input variants, built in a temp folder from real BCCD files.

Each case is what a user's data looks like after LabelImg, CVAT, Roboflow, Label Studio,
Windows or macOS touched it. Each asserts the exact outcome — the boxes read, or every
Problem (severity, file, field, message), or the one-line error — and that ``detlab check``
on it prints no traceback. Then EXIF round trips through ``detlab convert`` for every
orientation × annotation frame × target format.
"""

from __future__ import annotations

import os
import shutil
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from conftest import BCCD
from PIL import Image

from detlab.cli import main
from detlab.data.checks import validate_records
from detlab.data.dataset import load_dataset
from detlab.data.formats import read_records
from detlab.errors import DataError

A, B = "BloodImage_00000", "BloodImage_00001"
CLASSES = ["Platelets", "RBC", "WBC"]
# BloodImage_00000's first three objects in detlab's frame (VOC xmin-1, ymin-1, xmax, ymax), 640x480 image.
WBC0, RBC1, RBC2 = [259, 176, 491, 376], [77, 335, 184, 435], [62, 236, 169, 336]


@dataclass
class Expect:
    """What one case must give. ``problems``: (severity, file name, field, message start), all of them."""

    spec: str
    boxes: dict[str, list] | None = None  # image file name -> xyxy boxes, for every image read
    names: dict[str, list] | None = None  # image file name -> class name per box
    problems: list[tuple] = field(default_factory=list)
    error: str | None = None  # a DataError: the start of its message
    classes: list[str] | None = None
    difficult: dict[str, list] | None = None
    skipped_images: int = 0
    exit_code: int = 0


CASES = {}


def case(name):
    def register(fn):
        CASES[name] = fn
        return fn

    return register


# --- builders -------------------------------------------------------------------------


def real_xml(stem: str = A) -> str:
    return (BCCD / "Annotations" / f"{stem}.xml").read_text()


def voc_year(
    tmp: Path,
    xml: dict[str, str | bytes] | None = None,
    images: dict[str, Path | Image.Image | None] | None = None,
    split: str | bytes | None = None,
) -> Path:
    """A VOC year folder: ``xml`` name -> text/bytes, ``images`` name -> source file/PIL image (default: BCCD A)."""
    year = tmp / "VOC"
    (year / "Annotations").mkdir(parents=True)
    (year / "JPEGImages").mkdir()
    xml = {f"{A}.xml": real_xml()} if xml is None else xml
    images = {f"{A}.jpg": BCCD / "JPEGImages" / f"{A}.jpg"} if images is None else images
    for name, text in xml.items():
        (year / "Annotations" / name).write_bytes(text if isinstance(text, bytes) else text.encode())
    for name, src in images.items():
        put_image(year / "JPEGImages" / name, src)
    if split is not None:
        (year / "ImageSets" / "Main").mkdir(parents=True)
        (year / "ImageSets" / "Main" / "train.txt").write_bytes(
            split if isinstance(split, bytes) else split.encode()
        )
    return year


def put_image(dst: Path, src) -> None:
    if isinstance(src, Image.Image):
        src.save(dst)
    elif src is not None:
        shutil.copyfile(src, dst)


def first_objects(xml: str, n: int) -> str:
    """The XML with only its first ``n`` objects (short expectations)."""
    head, *objs = xml.split("<object>")
    tail = objs[-1].split("</annotation>")[-1] if objs else ""
    kept = ["<object>" + o.split("</annotation>")[0] for o in objs[:n]]
    return head + "".join(kept) + "</annotation>" + tail


def small_xml(filename: str | None = f"{A}.jpg") -> str:
    return (
        first_objects(real_xml(), 3)
        if filename == f"{A}.jpg"
        else first_objects(real_xml(), 3).replace(
            f"<filename>{A}.jpg</filename>", f"<filename>{filename}</filename>" if filename else ""
        )
    )


THREE = {f"{A}.jpg": [WBC0, RBC1, RBC2]}
THREE_NAMES = {f"{A}.jpg": ["WBC", "RBC", "RBC"]}


def yolo_line(c: int, box: list[float], fmt: str = "{:.10f}", w: int = 640, h: int = 480) -> str:
    x1, y1, x2, y2 = box
    vals = [(x1 + x2) / 2 / w, (y1 + y2) / 2 / h, (x2 - x1) / w, (y2 - y1) / h]
    return f"{c} " + " ".join(fmt.format(v) for v in vals)


YOLO_LABEL = "\n".join([yolo_line(2, WBC0), yolo_line(1, RBC1), yolo_line(1, RBC2)]) + "\n"


def yolo_root(
    tmp: Path,
    labels: dict[str, str | bytes] | None = None,
    images: dict[str, object] | None = None,
    yaml_text: str | bytes | None = "names: [Platelets, RBC, WBC]\n",
) -> Path:
    root = tmp / "yolo"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    images = {f"{A}.jpg": BCCD / "JPEGImages" / f"{A}.jpg"} if images is None else images
    labels = {f"{A}.txt": YOLO_LABEL} if labels is None else labels
    for name, src in images.items():
        put_image(root / "images" / name, src)
    for name, text in labels.items():
        (root / "labels" / name).write_bytes(text if isinstance(text, bytes) else text.encode())
    if yaml_text is not None:
        (root / "data.yaml").write_bytes(yaml_text if isinstance(yaml_text, bytes) else yaml_text.encode())
    return root


# --- VOC cases ---------------------------------------------------------------------------


@case("voc_labelimg_pristine")
def _(tmp):
    return Expect(str(voc_year(tmp, {f"{A}.xml": small_xml()})), THREE, THREE_NAMES, classes=["RBC", "WBC"])


@case("voc_windows_crlf")
def _(tmp):
    return Expect(str(voc_year(tmp, {f"{A}.xml": small_xml().replace("\n", "\r\n")})), THREE, THREE_NAMES)


@case("voc_utf8_bom")
def _(tmp):
    return Expect(
        str(voc_year(tmp, {f"{A}.xml": b"\xef\xbb\xbf" + small_xml().encode()})), THREE, THREE_NAMES
    )


@case("voc_utf16_windows_tool")
def _(tmp):
    text = '<?xml version="1.0" encoding="UTF-16"?>\n' + small_xml()
    return Expect(str(voc_year(tmp, {f"{A}.xml": text.encode("utf-16")})), THREE, THREE_NAMES)


@case("voc_default_namespace")
def _(tmp):
    xml = small_xml().replace("<annotation>", '<annotation xmlns="http://www.example.org/voc">')
    return Expect(str(voc_year(tmp, {f"{A}.xml": xml})), THREE, THREE_NAMES)


@case("voc_prefixed_namespace")
def _(tmp):
    xml = (
        small_xml()
        .replace("<annotation>", '<v:annotation xmlns:v="urn:voc">')
        .replace("</annotation>", "</v:annotation>")
    )
    for tag in (
        "object",
        "name",
        "bndbox",
        "xmin",
        "ymin",
        "xmax",
        "ymax",
        "size",
        "width",
        "height",
        "filename",
    ):
        xml = xml.replace(f"<{tag}>", f"<v:{tag}>").replace(f"</{tag}>", f"</v:{tag}>")
    return Expect(str(voc_year(tmp, {f"{A}.xml": xml})), THREE, THREE_NAMES)


@case("voc_cvat_extra_tags")
def _(tmp):
    xml = (
        small_xml()
        .replace(
            "<pose>",
            "<occluded>0</occluded><attributes><attribute><name>stage</name>"
            "<value>late</value></attribute></attributes><pose>",
        )
        .replace("<folder>", "<owner>lab</owner><folder>")
    )
    return Expect(str(voc_year(tmp, {f"{A}.xml": xml})), THREE, THREE_NAMES)


@case("voc_float_coordinates")
def _(tmp):
    xml = small_xml()
    for v in ("260", "177", "491", "376"):
        xml = xml.replace(f">{v}<", f">{v}.0<", 1)
    return Expect(str(voc_year(tmp, {f"{A}.xml": xml})), THREE, THREE_NAMES)


@case("voc_labelstudio_long_floats")
def _(tmp):
    xml = small_xml().replace("<xmin>260</xmin>", "<xmin>260.49999999999997</xmin>")
    return Expect(str(voc_year(tmp, {f"{A}.xml": xml})), {f"{A}.jpg": [[259.5, 176, 491, 376], RBC1, RBC2]})


@case("voc_negative_coordinate")
def _(tmp):
    xml = small_xml().replace("<xmin>260</xmin>", "<xmin>-5</xmin>")
    return Expect(
        str(voc_year(tmp, {f"{A}.xml": xml})),
        {f"{A}.jpg": [[0, 176, 491, 376], RBC1, RBC2]},
        problems=[
            (
                "fixed",
                f"{A}.xml",
                "object[0].bndbox",
                "box [-6.0, 176.0, 491.0, 376.0] crosses the 640x480 image border",
            )
        ],
    )


@case("voc_decimal_comma")
def _(tmp):
    xml = small_xml().replace("<xmin>260</xmin>", "<xmin>260,5</xmin>")
    return Expect(
        str(voc_year(tmp, {f"{A}.xml": xml})),
        {f"{A}.jpg": [RBC1, RBC2]},
        problems=[("skipped", f"{A}.xml", "object[0].bndbox.xmin", "not a number: '260,5'")],
    )


@case("voc_swapped_corners")
def _(tmp):
    xml = small_xml().replace("<xmin>260</xmin>", "<xmin>600</xmin>")
    return Expect(
        str(voc_year(tmp, {f"{A}.xml": xml})),
        {f"{A}.jpg": [RBC1, RBC2]},
        problems=[("skipped", f"{A}.xml", "object[0].bndbox", "zero or negative size (xmin=600 xmax=491")],
    )


@case("voc_missing_size")
def _(tmp):
    xml = small_xml().replace("<width>640</width>", "").replace("<height>480</height>", "")
    return Expect(
        str(voc_year(tmp, {f"{A}.xml": xml})),
        THREE,
        problems=[("info", f"{A}.xml", "size", "no usable <size><width>/<height>")],
    )


@case("voc_size_zero")
def _(tmp):
    xml = (
        small_xml()
        .replace("<width>640</width>", "<width>0</width>")
        .replace("<height>480</height>", "<height>0</height>")
    )
    return Expect(
        str(voc_year(tmp, {f"{A}.xml": xml})),
        THREE,
        problems=[("info", f"{A}.xml", "size", "no usable <size><width>/<height>")],
    )


@case("voc_difficult_words")
def _(tmp):
    xml = small_xml()
    for word in ("true", "Yes", "FALSE"):
        xml = xml.replace("<difficult>0</difficult>", f"<difficult>{word}</difficult>", 1)
    return Expect(str(voc_year(tmp, {f"{A}.xml": xml})), THREE, difficult={f"{A}.jpg": [True, True, False]})


@case("voc_difficult_float_and_empty")
def _(tmp):
    xml = small_xml().replace("<difficult>0</difficult>", "<difficult>1.0</difficult>", 1)
    xml = xml.replace("<difficult>0</difficult>", "<difficult/>", 1)
    return Expect(str(voc_year(tmp, {f"{A}.xml": xml})), THREE, difficult={f"{A}.jpg": [True, False, False]})


@case("voc_difficult_unknown_word")
def _(tmp):
    xml = small_xml().replace("<difficult>0</difficult>", "<difficult>maybe</difficult>", 1)
    return Expect(
        str(voc_year(tmp, {f"{A}.xml": xml})),
        THREE,
        difficult={f"{A}.jpg": [False, False, False]},
        problems=[("warning", f"{A}.xml", "object[0].difficult", "not a flag: 'maybe'")],
    )


@case("voc_truncated_word")
def _(tmp):
    xml = small_xml().replace("<truncated>0</truncated>", "<truncated>half</truncated>", 1)
    return Expect(
        str(voc_year(tmp, {f"{A}.xml": xml})),
        THREE,
        problems=[("warning", f"{A}.xml", "object[0].truncated", "not a flag: 'half'")],
    )


@case("voc_windows_absolute_filename")
def _(tmp):
    xml = small_xml(rf"C:\Users\lab\Desktop\BCCD\JPEGImages\{A}.jpg")
    return Expect(str(voc_year(tmp, {"other_name.xml": xml})), THREE)


@case("voc_windows_relative_filename")
def _(tmp):
    return Expect(str(voc_year(tmp, {"other_name.xml": small_xml(rf"JPEGImages\{A}.jpg")})), THREE)


@case("voc_posix_absolute_filename")
def _(tmp):
    return Expect(
        str(voc_year(tmp, {"other_name.xml": small_xml(f"/home/pi/detection_dataset/JPEGImages/{A}.jpg")})),
        THREE,
    )


@case("voc_filename_escapes")
def _(tmp):
    year = voc_year(tmp, {f"{A}.xml": small_xml(f"../../{A}.jpg")})
    return Expect(
        str(year),
        {},
        problems=[
            ("skipped", f"{A}.xml", "filename", f"'../../{A}.jpg' escapes the dataset folder"),
            ("error", "VOC", "images", "no usable image"),
        ],
        skipped_images=1,
        exit_code=1,
    )


@case("voc_filename_without_extension")
def _(tmp):
    return Expect(str(voc_year(tmp, {"x.xml": small_xml(A)})), THREE)


@case("voc_filename_stale_after_rename")
def _(tmp):
    return Expect(str(voc_year(tmp, {f"{A}.xml": small_xml("IMG_2041.jpg")})), THREE)


@case("voc_uppercase_jpg_ext")
def _(tmp):
    return Expect(
        str(voc_year(tmp, {f"{A}.xml": small_xml()}, {f"{A}.Jpg": BCCD / "JPEGImages" / f"{A}.jpg"})),
        {f"{A}.Jpg": THREE[f"{A}.jpg"]},
    )


@case("voc_no_filename_bmp_upper")
def _(tmp):
    image = Image.open(BCCD / "JPEGImages" / f"{A}.jpg")
    return Expect(
        str(voc_year(tmp, {f"{A}.xml": small_xml(None)}, {f"{A}.BMP": image})),
        {f"{A}.BMP": THREE[f"{A}.jpg"]},
    )


@case("voc_tif_upper")
def _(tmp):
    image = Image.open(BCCD / "JPEGImages" / f"{A}.jpg")
    return Expect(
        str(voc_year(tmp, {f"{A}.xml": small_xml(None)}, {f"{A}.TIF": image})),
        {f"{A}.TIF": THREE[f"{A}.jpg"]},
    )


@case("voc_filename_case_differs")
def _(tmp):
    return Expect(
        str(voc_year(tmp, {f"{A}.xml": small_xml(f"{A.lower()}.JPG")})),
        THREE,
        problems=[
            ("info", f"{A}.xml", "filename", f"no image '{A.lower()}'; {A}.jpg matches it ignoring case")
        ],
    )


@case("voc_uppercase_xml_ext")
def _(tmp):
    return Expect(str(voc_year(tmp, {f"{A}.XML": small_xml()})), THREE)


@case("voc_spaces_unicode_names")
def _(tmp):
    stem = "blood smear ü 01"
    year = voc_year(
        tmp,
        {f"{stem}.xml": small_xml(f"{stem}.jpg")},
        {f"{stem}.jpg": BCCD / "JPEGImages" / f"{A}.jpg"},
        split=f"{stem}\n",
    )
    return Expect(f"{year}:train", {f"{stem}.jpg": THREE[f"{A}.jpg"]})


@case("voc_macos_nfd_file_name")
def _(tmp):
    stem = "Zelle_ü"
    nfd = unicodedata.normalize("NFD", stem)
    year = voc_year(
        tmp, {f"{nfd}.xml": small_xml(f"{stem}.jpg")}, {f"{nfd}.jpg": BCCD / "JPEGImages" / f"{A}.jpg"}
    )
    return Expect(str(year), {f"{nfd}.jpg": THREE[f"{A}.jpg"]})


@case("voc_split_file_bom_crlf")
def _(tmp):
    year = voc_year(
        tmp,
        {f"{A}.xml": small_xml(), f"{B}.xml": real_xml(B)},
        {f"{A}.jpg": BCCD / "JPEGImages" / f"{A}.jpg", f"{B}.jpg": BCCD / "JPEGImages" / f"{B}.jpg"},
        split=b"\xef\xbb\xbf" + f"{A}\r\n".encode(),
    )
    return Expect(f"{year}:train", THREE)


@case("voc_split_lists_missing_xml")
def _(tmp):
    year = voc_year(tmp, {f"{A}.xml": small_xml()}, split=f"{A}\nBloodImage_09999\n")
    return Expect(
        f"{year}:train",
        THREE,
        problems=[
            (
                "skipped",
                "BloodImage_09999.xml",
                "file",
                "missing annotation for image id 'BloodImage_09999' listed in split 'train'",
            )
        ],
        skipped_images=1,
    )


@case("voc_macos_junk_files")
def _(tmp):
    year = voc_year(tmp, {f"{A}.xml": small_xml()})
    for folder in ("Annotations", "JPEGImages"):
        (year / folder / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (year / "JPEGImages" / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    (year / "JPEGImages" / "desktop.ini").write_text("[.ShellClassInfo]\r\n")
    return Expect(str(year), THREE)


@case("voc_appledouble_files")
def _(tmp):
    year = voc_year(
        tmp,
        {f"{A}.xml": small_xml(), f"._{A}.xml": b"\x00\x05\x16\x07Mac OS X"},
        {f"{A}.jpg": BCCD / "JPEGImages" / f"{A}.jpg"},
    )
    (year / "JPEGImages" / f"._{A}.jpg").write_bytes(b"\x00\x05\x16\x07Mac OS X")
    msg = "macOS AppleDouble metadata file (._*), not an image or annotation"
    return Expect(
        str(year), THREE, problems=[("info", f"._{A}.xml", "file", msg), ("info", f"._{A}.jpg", "file", msg)]
    )


@case("voc_class_case_clash")
def _(tmp):
    year = voc_year(
        tmp,
        {
            f"{A}.xml": small_xml(),
            f"{B}.xml": first_objects(real_xml(B), 2).replace("<name>RBC</name>", "<name>rbc</name>"),
        },
        {f"{A}.jpg": BCCD / "JPEGImages" / f"{A}.jpg", f"{B}.jpg": BCCD / "JPEGImages" / f"{B}.jpg"},
    )
    return Expect(
        str(year),
        {**THREE, f"{B}.jpg": [[67, 314, 286, 480], [345, 360, 446, 454]]},
        {**THREE_NAMES, f"{B}.jpg": ["WBC", "rbc"]},
        classes=["RBC", "WBC", "rbc"],
        problems=[
            ("warning", f"{B}.xml", "object[1].name", "class names 'RBC' and 'rbc' differ only in case")
        ],
    )


@case("voc_name_whitespace")
def _(tmp):
    xml = small_xml().replace("<name>WBC</name>", "<name>\n\t\tWBC  \n\t</name>")
    return Expect(str(voc_year(tmp, {f"{A}.xml": xml})), THREE, THREE_NAMES, classes=["RBC", "WBC"])


@case("voc_two_xml_one_image")
def _(tmp):
    year = voc_year(
        tmp,
        {f"{A}.xml": small_xml(), f"{B}.xml": small_xml()},
        {f"{A}.jpg": BCCD / "JPEGImages" / f"{A}.jpg", f"{B}.jpg": BCCD / "JPEGImages" / f"{B}.jpg"},
    )
    return Expect(
        str(year),
        THREE,
        problems=[("skipped", f"{B}.xml", "filename", f"leads to {A}.jpg, which {A}.xml already annotates")],
        skipped_images=1,
    )


@case("voc_xml_names_other_image")
def _(tmp):
    year = voc_year(
        tmp,
        {f"{B}.xml": small_xml()},
        {f"{A}.jpg": BCCD / "JPEGImages" / f"{A}.jpg", f"{B}.jpg": BCCD / "JPEGImages" / f"{B}.jpg"},
    )
    return Expect(
        str(year),
        THREE,
        problems=[("skipped", f"{B}.jpg", "annotation", f"{B}.xml is used for {A}.jpg, not for this image")],
        skipped_images=1,
    )


@case("voc_image_without_xml")
def _(tmp):
    year = voc_year(
        tmp,
        {f"{A}.xml": small_xml()},
        {f"{A}.jpg": BCCD / "JPEGImages" / f"{A}.jpg", f"{B}.jpg": BCCD / "JPEGImages" / f"{B}.jpg"},
    )
    return Expect(
        str(year),
        THREE,
        problems=[("skipped", f"{B}.jpg", "annotation", f"no Annotations/{B}.xml")],
        skipped_images=1,
    )


@case("voc_stem_shared_by_jpg_and_png")
def _(tmp):
    image = Image.open(BCCD / "JPEGImages" / f"{A}.jpg")
    year = voc_year(
        tmp, {f"{A}.xml": small_xml(None)}, {f"{A}.jpg": BCCD / "JPEGImages" / f"{A}.jpg", f"{A}.png": image}
    )
    return Expect(
        str(year),
        THREE,
        problems=[
            ("warning", f"{A}.xml", "filename", f"images {A}.jpg, {A}.png share the stem '{A}'"),
            ("skipped", f"{A}.png", "annotation", f"{A}.xml is used for {A}.jpg, not for this image"),
        ],
        skipped_images=1,
    )


@case("voc_broken_symlink_image")
def _(tmp):
    year = voc_year(tmp, {f"{A}.xml": small_xml(), f"{B}.xml": small_xml(f"{B}.jpg")})
    (year / "JPEGImages" / f"{B}.jpg").symlink_to(tmp / "unplugged_drive" / f"{B}.jpg")
    return Expect(
        str(year),
        THREE,
        problems=[("skipped", f"{B}.jpg", "file", "broken symbolic link to")],
        skipped_images=1,
    )


@case("voc_symlink_loop_image")
def _(tmp):
    year = voc_year(tmp, {f"{A}.xml": small_xml(), f"{B}.xml": small_xml(f"{B}.jpg")})
    (year / "JPEGImages" / f"{B}.jpg").symlink_to(year / "JPEGImages" / f"{B}.jpg")
    return Expect(
        str(year), THREE, problems=[("skipped", f"{B}.jpg", "file", "symbolic link loop")], skipped_images=1
    )


@case("voc_symlinked_image_ok")
def _(tmp):
    year = voc_year(tmp, {f"{A}.xml": small_xml()}, {})
    (year / "JPEGImages" / f"{A}.jpg").symlink_to(BCCD / "JPEGImages" / f"{A}.jpg")
    return Expect(str(year), THREE)


@case("voc_unescaped_ampersand")
def _(tmp):
    year = voc_year(tmp, {f"{A}.xml": small_xml(), f"{B}.xml": small_xml("cells & more.jpg")})
    return Expect(
        str(year),
        THREE,
        problems=[("skipped", f"{B}.xml", "xml", "malformed XML (not well-formed (invalid token)")],
        skipped_images=1,
    )


@case("voc_empty_xml_file")
def _(tmp):
    year = voc_year(tmp, {f"{A}.xml": small_xml(), f"{B}.xml": ""})
    return Expect(
        str(year),
        THREE,
        problems=[("skipped", f"{B}.xml", "xml", "malformed XML (no element found")],
        skipped_images=1,
    )


@case("voc_cvat_for_images_xml")
def _(tmp):
    cvat = '<annotations><version>1.1</version><image id="0" name="x.jpg"><box label="RBC" xtl="1" ytl="1" xbr="9" ybr="9"/></image></annotations>'
    year = voc_year(tmp, {f"{A}.xml": small_xml(), "annotations.xml": cvat})
    return Expect(
        str(year),
        THREE,
        problems=[
            (
                "skipped",
                "annotations.xml",
                "xml",
                "root element <annotations> is not <annotation>: not a PASCAL VOC file",
            )
        ],
        skipped_images=1,
    )


@case("folder_roboflow_flat_export")
def _(tmp):
    folder = tmp / "train"
    folder.mkdir()
    stem = f"{A}_jpg.rf.3f2a9c0d1e"
    shutil.copyfile(BCCD / "JPEGImages" / f"{A}.jpg", folder / f"{stem}.jpg")
    (folder / f"{stem}.xml").write_text(small_xml(f"{stem}.jpg"))
    return Expect(str(folder), {f"{stem}.jpg": THREE[f"{A}.jpg"]})


@case("folder_sibling_annotations_uppercase")
def _(tmp):
    (tmp / "ds" / "images").mkdir(parents=True)
    (tmp / "ds" / "labels_xml").mkdir()
    shutil.copyfile(BCCD / "JPEGImages" / f"{A}.jpg", tmp / "ds" / "images" / f"{A}.JPG")
    (tmp / "ds" / "labels_xml" / f"{A}.XML").write_text(small_xml(f"{A}.JPG"))
    return Expect(str(tmp / "ds"), {f"{A}.JPG": THREE[f"{A}.jpg"]})


@case("folder_image_without_xml")
def _(tmp):
    folder = tmp / "shots"
    folder.mkdir()
    shutil.copyfile(BCCD / "JPEGImages" / f"{A}.jpg", folder / f"{A}.jpg")
    shutil.copyfile(BCCD / "JPEGImages" / f"{B}.jpg", folder / f"{B}.webp")
    (folder / f"{A}.xml").write_text(small_xml())
    return Expect(
        str(folder),
        THREE,
        problems=[("skipped", f"{B}.webp", "annotation", f"no {folder}{os.sep}{B}.xml")],
        skipped_images=1,
    )


# --- YOLO cases --------------------------------------------------------------------------


@case("yolo_pristine")
def _(tmp):
    return Expect(str(yolo_root(tmp)), THREE, THREE_NAMES, classes=CLASSES)


@case("yolo_crlf")
def _(tmp):
    return Expect(
        str(
            yolo_root(
                tmp,
                {f"{A}.txt": YOLO_LABEL.replace("\n", "\r\n")},
                yaml_text="names: [Platelets, RBC, WBC]\r\n",
            )
        ),
        THREE,
        THREE_NAMES,
    )


@case("yolo_bom_label_and_yaml")
def _(tmp):
    return Expect(
        str(
            yolo_root(
                tmp,
                {f"{A}.txt": b"\xef\xbb\xbf" + YOLO_LABEL.encode()},
                yaml_text=b"\xef\xbb\xbfnames: [Platelets, RBC, WBC]\n",
            )
        ),
        THREE,
        THREE_NAMES,
    )


@case("yolo_tabs_and_trailing_spaces")
def _(tmp):
    text = "\n".join(ln.replace(" ", "\t") + "   " for ln in YOLO_LABEL.splitlines()) + "\n\n  \n"
    return Expect(str(yolo_root(tmp, {f"{A}.txt": text})), THREE, THREE_NAMES)


@case("yolo_scientific_notation")
def _(tmp):
    text = (
        "\n".join([yolo_line(2, WBC0, "{:.8e}"), yolo_line(1, RBC1, "{:.8E}"), yolo_line(1, RBC2, "{:.8e}")])
        + "\n"
    )
    return Expect(str(yolo_root(tmp, {f"{A}.txt": text})), THREE, THREE_NAMES)


@case("yolo_class_index_float")
def _(tmp):
    text = YOLO_LABEL.replace("2 ", "2.0 ", 1)
    return Expect(str(yolo_root(tmp, {f"{A}.txt": text})), THREE, THREE_NAMES)


@case("yolo_class_index_fraction")
def _(tmp):
    text = YOLO_LABEL.replace("2 ", "1.5 ", 1)
    return Expect(
        str(yolo_root(tmp, {f"{A}.txt": text})),
        {f"{A}.jpg": [RBC1, RBC2]},
        problems=[("skipped", f"{A}.txt", "line 1.class", "class index 1.5 is not a whole number")],
    )


@case("yolo_class_index_negative")
def _(tmp):
    text = YOLO_LABEL.replace("2 ", "-1 ", 1)
    return Expect(
        str(yolo_root(tmp, {f"{A}.txt": text})),
        {f"{A}.jpg": [RBC1, RBC2]},
        problems=[("skipped", f"{A}.txt", "line 1.class", "class index -1 out of range 0..2")],
    )


@case("yolo_empty_label_file")
def _(tmp):
    return Expect(
        str(yolo_root(tmp, {f"{A}.txt": ""})),
        {f"{A}.jpg": []},
        problems=[("error", "yolo", "boxes", "no usable box in the whole dataset")],
        exit_code=1,
    )


@case("yolo_whitespace_label_file_and_a_good_one")
def _(tmp):
    root = yolo_root(
        tmp,
        {f"{A}.txt": YOLO_LABEL, f"{B}.txt": " \r\n\t\n"},
        {f"{A}.jpg": BCCD / "JPEGImages" / f"{A}.jpg", f"{B}.jpg": BCCD / "JPEGImages" / f"{B}.jpg"},
    )
    return Expect(str(root), {**THREE, f"{B}.jpg": []})


@case("yolo_missing_label_file")
def _(tmp):
    root = yolo_root(
        tmp,
        images={f"{A}.jpg": BCCD / "JPEGImages" / f"{A}.jpg", f"{B}.jpg": BCCD / "JPEGImages" / f"{B}.jpg"},
    )
    return Expect(
        str(root),
        {**THREE, f"{B}.jpg": []},
        problems=[("info", f"{B}.jpg", "labels", f"no label file {B}.txt")],
    )


@case("yolo_polygon_line")
def _(tmp):
    x1, y1, x2, y2 = (v / s for v, s in zip(WBC0, (640, 480, 640, 480)))
    poly = f"2 {x1} {y1} {x2} {y1} {x2} {y2} {x1} {y2}\n"
    return Expect(
        str(yolo_root(tmp, {f"{A}.txt": poly})),
        {f"{A}.jpg": [WBC0]},
        problems=[("info", f"{A}.txt", "line 1", "polygon (segmentation) label")],
    )


@case("yolo_pixel_coordinates")
def _(tmp):
    return Expect(
        str(yolo_root(tmp, {f"{A}.txt": YOLO_LABEL + "1 320 240 100 80\n"})),
        THREE,
        problems=[("skipped", f"{A}.txt", "line 4", "coordinates 320 240 100 80 are not normalised to 0..1")],
    )


@case("yolo_prediction_with_confidence")
def _(tmp):
    return Expect(
        str(yolo_root(tmp, {f"{A}.txt": YOLO_LABEL + yolo_line(1, RBC1) + " 0.87\n"})),
        THREE,
        problems=[("skipped", f"{A}.txt", "line 4", "needs 5 numbers 'class cx cy w h', got 6")],
    )


@case("yolo_names_dict_by_index")
def _(tmp):
    return Expect(
        str(yolo_root(tmp, yaml_text="names:\n  0: Platelets\n  1: RBC\n  2: WBC\n")),
        THREE,
        THREE_NAMES,
        classes=CLASSES,
    )


@case("yolo_names_dict_string_keys")
def _(tmp):
    return Expect(
        str(yolo_root(tmp, yaml_text="names: {'2': WBC, '0': Platelets, '1': RBC}\n")),
        THREE,
        THREE_NAMES,
        classes=CLASSES,
    )


@case("yolo_names_dict_by_name")
def _(tmp):
    return Expect(
        str(yolo_root(tmp, yaml_text="names: {Platelets: 0, RBC: 1, WBC: 2}\n")),
        THREE,
        THREE_NAMES,
        classes=CLASSES,
    )


@case("yolo_names_dict_ambiguous")
def _(tmp):
    return Expect(
        str(yolo_root(tmp, yaml_text="names: {blood: cells, WBC: big}\n")),
        error="names: a mapping must be {index: name} or {name: index}",
        exit_code=1,
    )


@case("yolo_names_one_string")
def _(tmp):
    return Expect(
        str(yolo_root(tmp, yaml_text="names: Platelets RBC WBC\n")),
        error="names: expected a list or a mapping, got str 'Platelets RBC WBC'",
        exit_code=1,
    )


@case("yolo_names_duplicate")
def _(tmp):
    return Expect(
        str(yolo_root(tmp, yaml_text="names: [Platelets, RBC, RBC]\n")),
        error="names: 'RBC' is listed twice (indices 1 and 2)",
        exit_code=1,
    )


@case("yolo_names_null_entry")
def _(tmp):
    return Expect(
        str(yolo_root(tmp, yaml_text="names: [Platelets, null, WBC]\n")),
        error="names[1]: None is not a class name",
        exit_code=1,
    )


@case("yolo_names_case_variants")
def _(tmp):
    root = yolo_root(tmp, yaml_text="names: [Platelets, RBC, rbc]\n")
    return Expect(
        str(root),
        THREE,
        {f"{A}.jpg": ["rbc", "RBC", "RBC"]},
        classes=["Platelets", "RBC", "rbc"],
        problems=[("warning", "data.yaml", "names[2]", "class names 'RBC' and 'rbc' differ only in case")],
    )


@case("yolo_nc_disagrees")
def _(tmp):
    return Expect(
        str(yolo_root(tmp, yaml_text="nc: 4\nnames: [Platelets, RBC, WBC]\n")),
        error="nc: 4 but names lists 3 classes",
        exit_code=1,
    )


@case("yolo_yaml_with_tab_indent")
def _(tmp):
    return Expect(
        str(yolo_root(tmp, yaml_text="names:\n\t- Platelets\n")), error="invalid YAML (", exit_code=1
    )


@case("yolo_classes_txt_at_root")
def _(tmp):
    root = yolo_root(tmp, yaml_text=None)
    (root / "classes.txt").write_text("Platelets\nRBC\nWBC\n")
    return Expect(str(root), THREE, THREE_NAMES, classes=CLASSES)


@case("yolo_labelimg_classes_txt_in_labels")
def _(tmp):
    root = yolo_root(tmp, yaml_text=None)
    (root / "labels" / "classes.txt").write_bytes(b"\xef\xbb\xbfPlatelets\r\nRBC\r\nWBC\r\n")
    return Expect(str(root), THREE, THREE_NAMES, classes=CLASSES)


@case("yolo_classes_txt_duplicate")
def _(tmp):
    root = yolo_root(tmp, yaml_text=None)
    (root / "classes.txt").write_text("RBC\nRBC\nWBC\n")
    return Expect(str(root), error="line: 'RBC' is listed twice (indices 0 and 1)", exit_code=1)


@case("yolo_uppercase_extensions")
def _(tmp):
    src = Image.open(BCCD / "JPEGImages" / f"{A}.jpg")
    images = {"a.Jpg": BCCD / "JPEGImages" / f"{A}.jpg", "b.BMP": src, "c.TIF": src, "d.WEBP": src}
    root = yolo_root(tmp, {f"{n}.txt": YOLO_LABEL for n in "abcd"}, images)
    return Expect(str(root), dict.fromkeys(images, THREE[f"{A}.jpg"]))


@case("yolo_label_without_image")
def _(tmp):
    root = yolo_root(tmp, {f"{A}.txt": YOLO_LABEL, f"{B}.txt": YOLO_LABEL})
    return Expect(
        str(root),
        THREE,
        problems=[("skipped", f"{B}.txt", "file", f"label file without an image (no {B}.<image ext> in")],
        skipped_images=1,
    )


@case("yolo_broken_symlink_image")
def _(tmp):
    root = yolo_root(tmp, {f"{A}.txt": YOLO_LABEL, f"{B}.txt": YOLO_LABEL})
    (root / "images" / f"{B}.jpg").symlink_to(tmp / "gone" / f"{B}.jpg")
    return Expect(
        str(root),
        THREE,
        problems=[("skipped", f"{B}.jpg", "file", "broken symbolic link to")],
        skipped_images=1,
    )


@case("yolo_symlink_loop_image")
def _(tmp):
    root = yolo_root(tmp)
    (root / "images" / f"{B}.png").symlink_to(root / "images" / f"{B}.png")
    return Expect(
        str(root), THREE, problems=[("skipped", f"{B}.png", "file", "symbolic link loop")], skipped_images=1
    )


@case("yolo_folder_link_loop")
def _(tmp):
    root = yolo_root(tmp)
    (root / "images" / "again").symlink_to(root / "images")
    return Expect(str(root), THREE, problems=[("warning", "again", "folder", "folder link loop")])


@case("yolo_broken_symlink_label")
def _(tmp):
    root = yolo_root(tmp, {})
    (root / "labels" / f"{A}.txt").symlink_to(tmp / "gone.txt")
    return Expect(
        str(root),
        {},
        problems=[
            ("skipped", f"{A}.txt", "file", "label file is a broken symbolic link"),
            ("error", "yolo", "images", "no usable image"),
        ],
        skipped_images=1,
        exit_code=1,
    )


@case("yolo_appledouble_and_ds_store")
def _(tmp):
    root = yolo_root(tmp)
    for folder in ("images", "labels"):
        (root / folder / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (root / "images" / f"._{A}.jpg").write_bytes(b"\x00\x05\x16\x07")
    (root / "labels" / f"._{A}.txt").write_bytes(b"\x00\x05\x16\x07")
    return Expect(
        str(root), THREE, problems=[("info", f"._{A}.jpg", "file", "macOS AppleDouble metadata file")]
    )


@case("yolo_roboflow_split_folders")
def _(tmp):
    root = tmp / "rf"
    for split, stem in (("train", A), ("valid", B)):
        (root / split / "images").mkdir(parents=True)
        (root / split / "labels").mkdir()
        shutil.copyfile(BCCD / "JPEGImages" / f"{stem}.jpg", root / split / "images" / f"{stem}.jpg")
        (root / split / "labels" / f"{stem}.txt").write_text(YOLO_LABEL)
    (root / "data.yaml").write_text(
        "train: ../train/images\nval: ../valid/images\nnc: 3\nnames: ['Platelets', 'RBC', 'WBC']\n"
    )
    return Expect(f"{root}:valid", {f"{B}.jpg": THREE[f"{A}.jpg"]})


@case("yolo_windows_paths_in_yaml")
def _(tmp):
    root = yolo_root(tmp)
    (root / "images" / "train").mkdir()
    (root / "labels" / "train").mkdir()
    (root / "images" / f"{A}.jpg").rename(root / "images" / "train" / f"{A}.jpg")
    (root / "labels" / f"{A}.txt").rename(root / "labels" / "train" / f"{A}.txt")
    (root / "data.yaml").write_text("train: images\\train\nnames: [Platelets, RBC, WBC]\n")
    return Expect(str(root), THREE)


@case("yolo_colab_absolute_path")
def _(tmp):
    root = yolo_root(
        tmp, yaml_text="path: /content/datasets/bccd\ntrain: images\nnames: [Platelets, RBC, WBC]\n"
    )
    return Expect(str(root), THREE)


@case("yolo_image_list_file_bom_crlf")
def _(tmp):
    root = yolo_root(
        tmp,
        images={f"{A}.jpg": BCCD / "JPEGImages" / f"{A}.jpg", f"{B}.jpg": BCCD / "JPEGImages" / f"{B}.jpg"},
        yaml_text="train: train.txt\nnames: [Platelets, RBC, WBC]\n",
    )
    (root / "train.txt").write_bytes(b"\xef\xbb\xbf" + f"./images/{A}.jpg\r\n".encode())
    return Expect(str(root), THREE)


@case("yolo_ultralytics_named_yaml")
def _(tmp):
    root = yolo_root(tmp, yaml_text=None)
    (root / "bccd.YAML").write_text("path: .\ntrain: images\nnames:\n  0: Platelets\n  1: RBC\n  2: WBC\n")
    return Expect(str(root), THREE, THREE_NAMES)


@case("yolo_yaml_file_uppercase_suffix")
def _(tmp):
    root = yolo_root(tmp, yaml_text=None)
    (root / "DATA.YML").write_text("train: images\nnames: [Platelets, RBC, WBC]\n")
    return Expect(str(root / "DATA.YML"), THREE)


@case("yolo_unicode_and_spaces_in_names")
def _(tmp):
    stem = "frotti sanguin é 2"
    root = yolo_root(
        tmp,
        {f"{stem}.txt": YOLO_LABEL},
        {f"{stem}.jpg": BCCD / "JPEGImages" / f"{A}.jpg"},
        yaml_text="names: [plaquette, globule rouge, globule blanc ü]\n",
    )
    return Expect(
        str(root),
        {f"{stem}.jpg": THREE[f"{A}.jpg"]},
        {f"{stem}.jpg": ["globule blanc ü", "globule rouge", "globule rouge"]},
    )


# --- running a case ----------------------------------------------------------------------


def box_map(records) -> dict[str, object]:
    return {Path(r.file).name: r for r in records.images}


def run_check(spec: str, capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["check", spec])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def have_bccd(bccd):
    return bccd


@pytest.mark.parametrize("name", list(CASES))
def test_corpus_case(name: str, have_bccd, tmp_path: Path, capsys):
    expect = CASES[name](tmp_path)
    if expect.error is not None:
        with pytest.raises(DataError) as info:
            read_records(expect.spec)
        assert expect.error in str(info.value) and "\n" not in str(info.value), str(info.value)
    else:
        records = read_records(expect.spec)
        result = validate_records(records, decode=True)
        got = box_map(records)
        assert sorted(got) == sorted(expect.boxes), (sorted(got), [p.line() for p in records.problems])
        for file, boxes in expect.boxes.items():
            np.testing.assert_allclose(
                got[file].boxes.reshape(-1, 4),
                np.asarray(boxes, np.float32).reshape(-1, 4),
                atol=2e-3,
                err_msg=file,
            )
        for file, names in (expect.names or {}).items():
            assert [records.class_names[i] for i in got[file].labels] == names, file
        for file, flags in (expect.difficult or {}).items():
            assert got[file].difficult.tolist() == flags, file
        if expect.classes is not None:
            assert records.class_names == expect.classes
        assert result.images_skipped == expect.skipped_images, [p.line() for p in records.problems]
        wanted = [
            p for p in expect.problems if p[3] != "no usable box in the whole dataset"
        ]  # added by `check` only
        actual = [(p.severity, Path(p.file).name, p.field, p.message) for p in records.problems]
        assert len(actual) == len(wanted), ([p.line() for p in records.problems], wanted)
        for sev, file, fld, start in wanted:
            assert any(a[:3] == (sev, file, fld) and a[3].startswith(start) for a in actual), (
                (sev, file, fld, start),
                actual,
            )
    code, out, err = run_check(expect.spec, capsys)
    assert "Traceback" not in out + err
    assert code == expect.exit_code, out + err
    if expect.error is not None:
        assert err.startswith("detlab: ") and err.count("\n") == 1 and expect.error in err, err
    else:
        for sev, file, fld, start in expect.problems:
            assert any(
                ln.startswith(f"{sev}: ") and f"{file}: {fld}: {start}" in ln for ln in out.splitlines()
            ), (sev, file, fld, out)


def test_check_in_a_subprocess_prints_no_traceback(have_bccd, tmp_path: Path):
    """Two corpus cases through the installed entry point, as a user runs it."""
    import subprocess
    import sys

    for name in ("voc_default_namespace", "yolo_names_duplicate"):
        expect = CASES[name](tmp_path / name)
        run = subprocess.run(
            [sys.executable, "-m", "detlab", "check", expect.spec],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert "Traceback" not in run.stdout + run.stderr and run.returncode == expect.exit_code, run.stderr


def test_predict_folder_reports_links_it_cannot_follow(have_bccd, tmp_path: Path, capsys):
    from detlab.predict import expand_sources

    shutil.copyfile(BCCD / "JPEGImages" / f"{A}.jpg", tmp_path / f"{A}.JPG")
    (tmp_path / "loop.jpg").symlink_to(tmp_path / "loop.jpg")
    (tmp_path / "gone.png").symlink_to(tmp_path / "nowhere.png")
    assert expand_sources([tmp_path]) == [tmp_path / f"{A}.JPG"]
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"skipped: {tmp_path / 'gone.png'}: file: broken symbolic link to '{tmp_path / 'nowhere.png'}' (target missing) "
        "— restore the target or delete the link — skipped",
        f"skipped: {tmp_path / 'loop.jpg'}: file: symbolic link loop (the link leads back to itself) "
        "— point it at a real file or delete it — skipped",
    ]


# --- EXIF round trips through `detlab convert` ---------------------------------------------

RED, BLUE = (230, 20, 20), (20, 20, 230)
RAW_W, RAW_H = 64, 40  # not square: a 90° turn is visible in the size
SHOW = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
UNSHOW = {**SHOW, 6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}  # the inverse of each


def exif_source(root: Path) -> Path:
    """A VOC folder: per orientation 1..8, one image annotated in the raw grid and one in the displayed frame."""
    year = root / "VOCexif"
    (year / "Annotations").mkdir(parents=True)
    (year / "JPEGImages").mkdir()
    for o in range(1, 9):
        for frame in ("raw", "shown"):
            turned = o in (5, 6, 7, 8)
            size = (RAW_W, RAW_H) if frame == "raw" or not turned else (RAW_H, RAW_W)
            canvas = Image.new("RGB", size, BLUE)
            box = (6, 9, 26, 31) if size[0] > size[1] else (5, 12, 27, 36)  # continuous xyxy, off-centre
            canvas.paste(RED, box)
            stored = canvas if frame == "raw" or o == 1 else canvas.transpose(UNSHOW[o])
            exif = Image.Exif()
            exif[0x0112] = o
            stem = f"o{o}_{frame}"
            stored.save(year / "JPEGImages" / f"{stem}.jpg", quality=95, exif=exif.tobytes())
            (year / "Annotations" / f"{stem}.xml").write_text(
                f"<annotation><filename>{stem}.jpg</filename><size><width>{size[0]}</width><height>{size[1]}</height></size>"
                f"<object><name>blob</name><difficult>0</difficult><bndbox><xmin>{box[0] + 1}</xmin><ymin>{box[1] + 1}</ymin>"
                f"<xmax>{box[2]}</xmax><ymax>{box[3]}</ymax></bndbox></object></annotation>"
            )
    return year


@pytest.fixture(scope="module")
def exif_converted(tmp_path_factory):
    """The source's boxes per image in the displayed frame, and each target read back the same way."""
    from detlab.data.convert import convert

    root = tmp_path_factory.mktemp("exif")
    src = exif_source(root)

    def displayed(spec):
        ds = load_dataset(spec)
        return {
            Path(r.file).name: (ds[i][0], ds[i][1]["boxes"].numpy()) for i, r in enumerate(ds.records.images)
        }

    out = {"src": displayed(src)}
    for to in ("coco", "voc", "yolo"):
        written, _ = convert(src, root / to, to)
        out[to] = displayed(f"{written}:all" if to == "voc" else written)
    return out


@pytest.mark.parametrize("to", ["coco", "voc", "yolo"])
@pytest.mark.parametrize("frame", ["raw", "shown"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_round_trip_keeps_boxes_on_the_same_pixels(
    exif_converted, orientation: int, frame: str, to: str
):
    name = f"o{orientation}_{frame}.jpg"
    image, source = exif_converted["src"][name]
    back_image, back = exif_converted[to][name]
    assert back_image.shape == image.shape
    np.testing.assert_allclose(back, source, atol=1e-3)
    # Flips and 180° keep the size, so a raw-frame annotation of 2..4 cannot be told from a displayed one:
    # detlab reads it as displayed (dataset.boxes_in_display_frame), and only the pixels, not the object, must match.
    if frame == "shown" or orientation in (1, 5, 6, 7, 8):
        x1, y1, x2, y2 = np.round(back[0]).astype(int)
        inside = back_image[:, y1 + 2 : y2 - 2, x1 + 2 : x2 - 2]
        assert inside[0].mean() > 0.8 and inside[2].mean() < 0.2, back[0]
