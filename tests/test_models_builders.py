"""The builders after the one-pattern restructuring: the same models as before, knobs listed once
and reaching the model, a misspelt or mistyped knob one line before any data, no import cycle.

The parameter counts, state-dict keys and seeded initialisations below were recorded from the
builders as they were before the restructuring (commit 8345cf1, torch 2.14.1), so a difference is
a changed architecture, parameter order or checkpoint layout, not a changed test.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
from pathlib import Path

import pytest
import torch

from detlab import config
from detlab.cli import main
from detlab.config import resolve
from detlab.errors import ConfigError
from detlab.models import families
from detlab.models.catalogue import KNOBS, MODELS, build_model, knobs
from detlab.models.detr import DetrKnobs
from detlab.models.knobs import knob_rows

# name: (parameters, trainable parameters, state-dict entries, sha256[:16] of the sorted "key:shape" lines),
# each built with 3 classes, weights none, default knobs.
BEFORE = {
    "faster_rcnn_r50_fpn": (41362531, 41362531, 348, "943858555392f964"),
    "faster_rcnn_r18_fpn": (28293731, 28293731, 150, "77306d304c980cea"),
    "faster_rcnn_effl0_fpn": (19957283, 19957283, 318, "c34605b4b2bbba20"),
    "detr_r50": (41502152, 41279752, 458, "892568d81bcc0917"),
    "detr_r18": (28820936, 28664072, 293, "be9bac8728c47ffe"),
    "detr_effl0": (20524264, 20509688, 433, "2cb9da667214c763"),
    "fcos_r18_fpn": (19100232, 19100232, 174, "60a8175fe119b2d7"),
    "fcos_r34_fpn": (29208392, 29208392, 270, "ec9aedef6fa1410d"),
    "fcos_r50_fpn": (32119880, 32119880, 372, "1e9d13ed20ef73c8"),
    "fcos_r101_fpn": (51112008, 51112008, 678, "833eed237f4006c2"),
    "fcos_effl0_fpn": (10774024, 10774024, 342, "73828b6f48709b4f"),
    "ssd300_vgg16": (24013232, 24013232, 71, "d3cf37a698f088ac"),
    "ssdlite_effl0": (3481216, 3481216, 456, "0724658a92277f84"),
    "retinanet_r50_fpn": (32242559, 32242559, 354, "7413c34338fb2e45"),
}
# build_kwargs at the defaults with weights none (what a checkpoint saves and rebuilds from)
_FPN = dict(
    min_size=800,
    max_size=1333,
    score_thresh=0.05,
    detections_per_img=100,
    trainable_layers=5,
    frozen_bn=False,
)
_FRCNN = dict(
    _FPN,
    nms_thresh=0.5,
    rpn_post_nms_top_n_train=2000,
    rpn_post_nms_top_n_test=1000,
    box_batch_size_per_image=512,
)
_FCOS = dict(_FPN, center_sampling_radius=1.5, nms_thresh=0.6, topk_candidates=1000, fpn_channels=256)
_SSD = dict(size=300, score_thresh=0.01, nms_thresh=0.45, detections_per_img=200, topk_candidates=400)
BUILD_KWARGS_BEFORE = {
    **dict.fromkeys(("faster_rcnn_r50_fpn", "faster_rcnn_r18_fpn", "faster_rcnn_effl0_fpn"), _FRCNN),
    **dict.fromkeys(("detr_r50", "detr_r18", "detr_effl0"), {}),
    **dict.fromkeys(
        ("fcos_r18_fpn", "fcos_r34_fpn", "fcos_r50_fpn", "fcos_r101_fpn", "fcos_effl0_fpn"), _FCOS
    ),
    "ssd300_vgg16": dict(_SSD, trainable_layers=5, frozen_bn=False),
    "ssdlite_effl0": dict(_SSD, size=320, trainable_layers=None, frozen_bn=False),
    "retinanet_r50_fpn": dict(_FPN, nms_thresh=0.5, detections_per_img=300, topk_candidates=1000),
}
# sum of |value| over every float tensor of the state dict after torch.manual_seed(0) (float64 sums)
SEEDED_BEFORE = [
    ("fcos_effl0_fpn", {"fpn_channels": 64}, 268845.26909788436),
    (
        "detr_r18",
        dict(hidden_dim=64, dim_feedforward=128, enc_layers=1, dec_layers=1, num_queries=10),
        238556.17961204425,
    ),
]


def _quiet(name: str) -> dict:
    return {} if name.startswith("detr_") else {"log": None}


def test_the_recorded_table_covers_the_catalogue():
    assert list(BEFORE) == list(MODELS) == list(BUILD_KWARGS_BEFORE)


@pytest.mark.parametrize("name", list(BEFORE))
def test_each_model_has_the_parameters_and_state_dict_keys_it_had_before(name):
    with torch.device("meta"):  # shapes and names only: every model in well under a second
        model = build_model(name, 3, **_quiet(name))
    state = model.state_dict()
    lines = "\n".join(f"{k}:{tuple(v.shape)}" for k, v in sorted(state.items()))
    got = (
        sum(p.numel() for p in model.parameters()),
        sum(p.numel() for p in model.parameters() if p.requires_grad),
        len(state),
        hashlib.sha256(lines.encode()).hexdigest()[:16],
    )
    assert got == BEFORE[name]
    assert model.build_kwargs == BUILD_KWARGS_BEFORE[name]
    assert model.family == families.family_of(name)


@pytest.mark.skipif(torch.__version__ != "2.14.1+cu130", reason="initialisation recorded with torch 2.14.1")
@pytest.mark.parametrize("name, kwargs, total", SEEDED_BEFORE, ids=[s[0] for s in SEEDED_BEFORE])
def test_the_same_seed_gives_the_same_initial_weights_as_before(name, kwargs, total):
    torch.manual_seed(0)
    model = build_model(name, 3, **_quiet(name), **kwargs)
    got = sum(float(v.double().abs().sum()) for v in model.state_dict().values() if v.is_floating_point())
    assert got == pytest.approx(total, rel=1e-12)


# --- knobs: listed once, with a comment and a default, and reaching the model ---------------


@pytest.mark.parametrize("family", list(KNOBS))
def test_every_knob_has_a_type_a_default_and_a_comment(family):
    rows = knob_rows(KNOBS[family])
    assert [r.name for r in rows] == [f.name for f in dataclasses.fields(KNOBS[family])]
    for row in rows:
        assert row.type and len(row.comment) > 10, row
        assert row.default == getattr(KNOBS[family](), row.name)


def test_knobs_of_a_name_are_its_familys_and_comments_come_from_the_source():
    assert knobs("ssdlite_effl0") == knobs("ssd300_vgg16") == knob_rows(KNOBS["ssd"])
    rows = {r.name: r for r in knobs("detr_effl0")}
    assert rows["num_queries"] == ("num_queries", "int", 100, "object queries = most detections per image")
    # a comment written on the lines above its field is that field's
    assert rows["query_selection"].comment.startswith("decoder queries from the top encoder tokens")
    assert rows["query_selection"].default is False
    assert [r.name for r in knobs("detr_r18")] == [f.name for f in dataclasses.fields(DetrKnobs)]
    with pytest.raises(ConfigError, match="did you mean fcos_r18_fpn"):
        knobs("fcos_r18")


def test_knobs_reach_the_torchvision_modules_under_their_names():
    with torch.device("meta"):
        frcnn = build_model(
            "faster_rcnn_r18_fpn",
            3,
            log=None,
            min_size=320,
            max_size=400,
            score_thresh=0.3,
            nms_thresh=0.4,
            detections_per_img=7,
            rpn_post_nms_top_n_train=300,
            rpn_post_nms_top_n_test=200,
            box_batch_size_per_image=64,
            trainable_layers=2,
        )
        fcos = build_model(
            "fcos_r18_fpn",
            3,
            log=None,
            center_sampling_radius=2.5,
            score_thresh=0.2,
            nms_thresh=0.7,
            detections_per_img=9,
            topk_candidates=11,
        )
        ssd = build_model("ssdlite_effl0", 3, log=None, size=256, topk_candidates=50, detections_per_img=20)
    heads = frcnn.roi_heads
    assert (frcnn.transform.min_size, frcnn.transform.max_size) == ((320,), 400)
    assert (heads.score_thresh, heads.nms_thresh, heads.detections_per_img) == (0.3, 0.4, 7)
    assert frcnn.rpn._post_nms_top_n == {"training": 300, "testing": 200}
    assert heads.fg_bg_sampler.batch_size_per_image == 64
    assert frcnn.build_kwargs["trainable_layers"] == 2
    assert not frcnn.backbone.body.layer2[0].conv1.weight.requires_grad  # 2 trainable stages: layer3, layer4
    assert frcnn.backbone.body.layer3[0].conv1.weight.requires_grad
    assert (fcos.center_sampling_radius, fcos.score_thresh, fcos.nms_thresh) == (2.5, 0.2, 0.7)
    assert (fcos.detections_per_img, fcos.topk_candidates) == (9, 11)
    assert (ssd.transform.min_size, ssd.transform.fixed_size) == ((256,), (256, 256))
    assert (ssd.topk_candidates, ssd.detections_per_img) == (50, 20)


def test_a_misspelt_knob_names_the_model_the_nearest_knob_and_all_knobs():
    names = ", ".join(r.name for r in knobs("retinanet_r50_fpn"))
    with pytest.raises(ConfigError) as err:
        build_model("retinanet_r50_fpn", 3, topk_candidate=10)
    assert str(err.value) == (
        f"retinanet_r50_fpn: unknown knob 'topk_candidate'; did you mean 'topk_candidates'? knobs: {names}"
    )
    with pytest.raises(
        ConfigError, match=r"^detr_r18: unknown knob 'num_querys'; did you mean 'num_queries'\?"
    ):
        build_model("detr_r18", 3, num_querys=10)
    with pytest.raises(ConfigError, match=r"^ssd300_vgg16: unknown knob 'banana'; knobs: size, "):
        build_model("ssd300_vgg16", 3, banana=1)  # nothing close: no guess, the list


@pytest.mark.parametrize(
    "model, item, message",
    [
        (
            "detr_effl0",
            "model_kwargs.num_querys=10",
            "config key 'model_kwargs.num_querys': not a knob of detr_effl0; did you mean 'num_queries'? knobs: "
            + ", ".join(f.name for f in dataclasses.fields(DetrKnobs)),
        ),
        (
            "ssdlite_effl0",
            "model_kwargs.size=big",
            "config key 'model_kwargs.size': 'big' is not an integer or null",
        ),
        (
            "faster_rcnn_effl0_fpn",
            "model_kwargs.rpn_post_nms_top_n_test=1e3x",
            "config key 'model_kwargs.rpn_post_nms_top_n_test': '1e3x' is not an integer",
        ),
        (
            "detr_r18",
            "model_kwargs.train_min_sizes=384",
            "config key 'model_kwargs.train_min_sizes': 384 is not a list or null",
        ),
    ],
)
def test_cli_refuses_a_bad_knob_in_one_line_before_reading_data(tmp_path, capsys, model, item, message):
    argv = ["train", "--data", str(tmp_path / "no_such_data"), "--model", model, "--out", str(tmp_path / "r")]
    assert main([*argv, "--weights", "imagenet", "--set", item]) == 2
    assert capsys.readouterr().err == f"detlab: {message}\n"
    assert not (tmp_path / "r").exists()


def test_recipe_knobs_are_valid_knobs_and_a_run_gets_its_own_copy():
    for family, recipe in config.RECIPES.items():
        assert set(recipe.get("model_kwargs", {})) <= {r.name for r in knob_rows(KNOBS[family])}, family
    a = resolve({"model": "detr_effl0", "weights": "imagenet"})
    a.model_kwargs["num_queries"] = 7
    assert resolve({"model": "detr_effl0", "weights": "imagenet"}).model_kwargs["num_queries"] == 40


def test_one_family_function_for_config_and_models():
    assert config.family_of is families.family_of
    assert [families.family_of(n) for n in ("ssdlite_effl0", "fcos_tiny", "detr_r50")] == [
        "ssd",
        "fcos",
        "detr",
    ]
    with pytest.raises(ConfigError, match="no known family prefix"):
        families.family_of("yolo_v8")


# --- no import cycle among detlab.models modules --------------------------------------------


def _models_import_graph() -> dict[str, set[str]]:
    """``module -> detlab.models modules it imports`` (any import statement, also inside functions)."""
    root = Path(__file__).resolve().parents[1] / "detlab"
    graph: dict[str, set[str]] = {}
    for path in sorted((root / "models").rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                targets.add(node.module)
            elif isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
        graph[module] = {t for t in targets if t.startswith("detlab.models") and t != module}
    return graph


def test_no_import_cycle_among_model_modules():
    graph = _models_import_graph()
    assert "detlab.models.detr.model" in graph and "detlab.models.detr.weights" in graph
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for target in sorted(graph.get(module, ())):
            if state.get(target) == "open":
                pytest.fail("import cycle: " + " -> ".join([*path[path.index(target) :], target]))
            if target not in state:
                visit(target, [*path, target])
        state[module] = "done"

    for module in graph:
        if module not in state:
            visit(module, [module])
