"""A batch of mixed-size images gives each image the detections it gets alone, in every family.

torchvision pads a batch to its largest image; FCOS's GroupNorm head then normalises over the
padding and every score moves (0 of the top 30 boxes kept their place in a 3-image batch before
the models ran each size on its own), and every family's border convolutions see zeros.
"""

from __future__ import annotations

import pytest
import torch
from test_report_runfolder import one_thread  # noqa: F401  (autouse fixture)

from detlab.models.catalogue import build_model

SIZES = [(120, 160), (160, 100), (75, 75), (120, 160)]  # two of one size: they share a call


def _images() -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    images = []
    for h, w in SIZES:
        im = torch.rand(3, h, w, generator=gen) * 0.3
        im[:, h // 5 : h // 2, w // 4 : w // 2] += 0.6  # a bright block: something box-like
        images.append(im)
    return images


@pytest.mark.parametrize(
    "name,size",
    [
        ("fcos_r18_fpn", {"min_size": 96, "max_size": 160}),
        ("faster_rcnn_r18_fpn", {"min_size": 96, "max_size": 160}),
        ("detr_r18", {"min_size": 96, "max_size": 160}),
        ("ssdlite_effl0", {"size": 128}),
    ],
)
def test_a_mixed_batch_equals_each_image_alone(name, size):
    torch.manual_seed(0)
    model = build_model(name, 3, weights="none", **size).eval()
    images = _images()
    with torch.inference_mode():
        alone = [model([im])[0] for im in images]
        batched = model(images)
    assert len(batched) == len(images)
    for a, b in zip(alone, batched):
        assert len(a["boxes"]) > 0
        for key in ("boxes", "scores", "labels"):
            torch.testing.assert_close(b[key], a[key], rtol=1e-5, atol=1e-4)
