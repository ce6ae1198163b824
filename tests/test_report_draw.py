"""Drawn boxes a person can read: a real font scaled to the image, filled captions, widths that scale,
and ground truth (dashed) told apart from predictions (solid)."""

from __future__ import annotations

import numpy as np
import torch

from detlab.report.draw import caption, class_colour, draw_boxes, line_width, text_size


def _drawn(size, box, **kw):
    image = torch.zeros(3, size, size)
    return draw_boxes(image, np.array([box], np.float32), [0], ["cell"], **kw).permute(1, 2, 0).numpy()


def _is(colour, pixels):
    return np.all(pixels == np.array(colour, np.uint8), axis=-1)


def test_caption_sits_on_a_filled_box_of_the_class_colour():
    out = _drawn(400, (100, 200, 300, 350), scores=[0.87])
    colour = class_colour(0)
    rows = np.flatnonzero(
        _is(colour, out[:200, 100:160]).any(1)
    )  # the caption band over the box's top-left corner
    assert rows[0] == 200 - 10 and 10 == text_size(
        400, 400
    )  # one band as high as the 10 px font, right above
    above = out[rows[0] : 200, 100:145]
    filled, text = _is(colour, above).mean(), (~_is(colour, above) & (above.sum(-1) > 0)).mean()
    assert filled > 0.5 and text > 0.02  # a filled band, with text of another colour on it
    assert _is(colour, out[200:351, 100]).all()  # the left edge: a solid outline


def test_ground_truth_is_dashed_and_predictions_solid():
    solid = _drawn(400, (50, 300, 350, 380))
    dashed = _drawn(400, (50, 300, 350, 380), ground_truth=True)
    bottom = slice(60, 340)  # along the bottom edge, away from the corners and the caption
    assert _is(class_colour(0), solid[380, bottom]).all()
    hits = _is(class_colour(0), dashed[380, bottom])
    assert 0.3 < hits.mean() < 0.7  # dashes and gaps


def test_text_and_lines_scale_with_the_image():
    assert text_size(128, 128) == 10 and text_size(3000, 4000) == 66
    assert line_width(256, 256) == 1 and line_width(3000, 4000) == 10
    small, big = _drawn(200, (20, 100, 150, 180)), _drawn(2000, (200, 1000, 1500, 1800))
    band = lambda img, y1, x1: (_is(class_colour(0), img[:y1, x1 : x1 + 5]).any(-1)).sum()  # noqa: E731
    assert band(big, 1000, 200) > 3 * band(
        small, 100, 20
    )  # caption height grows with the picture (10 → 44 px)


def test_caption_of_a_box_at_the_top_edge_stays_inside_the_image():
    out = _drawn(300, (0, 0, 120, 80), scores=[0.5])
    assert _is(class_colour(0), out[:8, 2:40]).mean() > 0.3  # drawn inside the box's top, not cut off


def test_tile_caption_writes_the_file_name_in_a_band():
    tile = (
        caption(torch.full((3, 160, 160), 200, dtype=torch.uint8), "BloodImage_00007.jpg")
        .permute(1, 2, 0)
        .numpy()
    )
    band = tile[-12:, :]
    assert (band == 20).all(-1).mean() > 0.5 and (band == 255).all(-1).any()
    assert (tile[:100] == 200).all()


def test_undefined_metrics_print_a_dash_in_reports():
    from detlab.report.html import pct

    assert [pct(v) for v in (0.4567, 0.0, -1.0, float("nan"), None, float("inf"), True)] == [
        "45.7",
        "0.0",
        "–",
        "–",
        "–",
        "–",
        "–",
    ]
