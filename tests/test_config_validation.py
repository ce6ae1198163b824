"""Every config field checked by its annotated type and rule, and the cross-field rules, at start-up.

Each bad value is one ConfigError line naming the key, the value and what is expected; the
command-line cases show it comes before any data is looked at (the data path does not exist).
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from detlab.cli import main
from detlab.config import FIELDS, PROTOCOLS, parse_set, resolve
from detlab.errors import ConfigError

FCOS_PARTS = "val/loss_classification, val/loss_bbox_regression, val/loss_bbox_ctrness"

# (--set item, the exact message), resolved for fcos_r18_fpn.
BAD = [
    ("ema_decay=abc", "config key 'ema_decay': 'abc' is not a number in [0, 1)"),
    ("ema_decay=1.0", "config key 'ema_decay': 1.0 is not a number in [0, 1)"),
    ("ema_decay=.nan", "config key 'ema_decay': nan is not a number in [0, 1)"),
    ("momentum=abc", "config key 'momentum': 'abc' is not a number in [0, 1)"),
    ("warmup_factor=abc", "config key 'warmup_factor': 'abc' is not a number in [0, 1]"),
    ("warmup_factor=2", "config key 'warmup_factor': 2 is not a number in [0, 1]"),
    ("min_lr_factor=-0.1", "config key 'min_lr_factor': -0.1 is not a number in [0, 1]"),
    (
        "milestones=5",
        "config key 'milestones': 5 is not a list of fractions of the run in (0, 1), e.g. [0.67, 0.89]",
    ),
    (
        "milestones=[8,11]",
        "config key 'milestones': [8, 11] is not a list of fractions of the run in (0, 1), e.g. [0.67, 0.89]",
    ),
    ("model_kwargs.min_size=abc", "config key 'model_kwargs.min_size': 'abc' is not an integer"),
    ("model_kwargs.score_thresh=high", "config key 'model_kwargs.score_thresh': 'high' is not a number"),
    ("model_kwargs.frozen_bn=3", "config key 'model_kwargs.frozen_bn': 3 is not true or false or null"),
    (
        "model_kwargs.min_sise=320",
        "config key 'model_kwargs.min_sise': not a knob of fcos_r18_fpn; did you mean 'min_size'? knobs: min_size, "
        "max_size, center_sampling_radius, score_thresh, nms_thresh, detections_per_img, topk_candidates, "
        "fpn_channels, trainable_layers, frozen_bn",
    ),
    (
        "transform_kwargs.scale=2",
        "config key 'transform_kwargs': {'scale': 2} is not a mapping of min_size, max_size or size",
    ),
    ("device=banana", "config key 'device': 'banana' is not one of auto, cpu, cuda, cuda:N, mps"),
    (
        "protocols=[coco,foo]",
        "config key 'protocols': 'foo' is not a protocol; use a list of coco, voc07, voc12",
    ),
    ("protocols=[]", "config key 'protocols': [] is not a list of coco, voc07, voc12"),
    (
        "metric=val/loss_foo",
        f"config key 'metric': 'val/loss_foo' is not a loss part of fcos models; use val/loss "
        f"or one of {FCOS_PARTS}",
    ),
    (
        "metric=coco/ap50",
        "config key 'metric': 'coco/ap50' is not a metric detlab computes; did you mean 'coco/AP50'?",
    ),
    ("epochs=true", "config key 'epochs': true is not an integer ≥ 1"),
    ("epochs=2.5", "config key 'epochs': 2.5 is not an integer ≥ 1"),
    ("epochs=0", "config key 'epochs': 0 is not an integer ≥ 1"),
    ("batch_size=four", "config key 'batch_size': 'four' is not an integer ≥ 1"),
    ("seed=-1", "config key 'seed': -1 is not an integer ≥ 0"),
    ("num_workers=null", "config key 'num_workers': null is not an integer ≥ 0"),
    ("lr=0", "config key 'lr': 0 is not a positive number, or null to scale base_lr"),
    ("lr=fast", "config key 'lr': 'fast' is not a positive number, or null to scale base_lr"),
    ("base_lr=.inf", "config key 'base_lr': inf is not a number ≥ 0"),
    ("clip_grad_norm=-1", "config key 'clip_grad_norm': -1 is not a number ≥ 0"),
    ("ema=maybe", "config key 'ema': 'maybe' is not true or false"),
    ("plots=1", "config key 'plots': 1 is not true or false"),
    ("optimizer=adam", "config key 'optimizer': 'adam' is not one of sgd, adamw"),
    ("schedule=linear", "config key 'schedule': 'linear' is not one of step, cosine, constant"),
    ("precision=int8", "config key 'precision': 'int8' is not one of auto, fp32, bf16, fp16"),
    ("amp=int8", "--set: config key 'amp': 'int8' is not one of auto, fp32, bf16, fp16"),
    ("eval_before=sometimes", "config key 'eval_before': 'sometimes' is not one of auto, true, false"),
    ("weights=3", "config key 'weights': 3 is not a string"),
    ("model_kwargs=320", None),  # a dict field given a scalar: apply_overrides's own message
]


def _resolve(item: str, model: str = "fcos_r18_fpn"):
    return resolve({"model": model, "weights": "imagenet", **parse_set([item])})


@pytest.mark.parametrize("item,message", BAD, ids=[b[0] for b in BAD])
def test_bad_value_is_one_line_naming_key_value_and_expectation(item, message):
    with pytest.raises(ConfigError) as err:
        _resolve(item)
    if message is None:
        message = "--set: key 'model_kwargs' must be a mapping, got 320; use model_kwargs.NAME=VALUE"
    assert str(err.value) == message


def test_metric_needs_its_protocol():
    with pytest.raises(ConfigError) as err:
        resolve({"model": "fcos_r18_fpn", "protocols": ["coco"], "metric": "voc07/mAP"})
    assert str(err.value) == (
        "config key 'metric': 'voc07/mAP' needs protocol 'voc07', which is not in protocols "
        "['coco']; add it or pick e.g. metric=coco/AP50"
    )


@pytest.mark.parametrize(
    "model,part",
    [
        ("faster_rcnn_r18_fpn", "rpn_box_reg"),
        ("retinanet_r50_fpn", "classification"),
        ("ssd300_vgg16", "bbox_regression"),
        ("detr_r18", "giou_3"),
        ("detr_r18", "ce_enc"),
    ],
)
def test_each_familys_own_loss_parts_are_metrics(model, part):
    cfg = resolve({"model": model, "weights": "imagenet", "metric": f"val/loss_{part}"})
    assert cfg.metric == f"val/loss_{part}"


def test_loss_part_of_another_family_is_refused():
    with pytest.raises(ConfigError, match="'val/loss_bbox_ctrness' is not a loss part of faster_rcnn models"):
        resolve({"model": "faster_rcnn_r18_fpn", "metric": "val/loss_bbox_ctrness"})


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_cuda_without_a_gpu(device):
    with pytest.raises(ConfigError) as err:
        _resolve(f"device={device}")
    assert str(err.value) == (
        f"config key 'device': {device!r} is not available: torch sees no CUDA GPU here; use "
        "device=cpu or auto"
    )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_index_beyond_the_gpus():
    n = torch.cuda.device_count()
    with pytest.raises(ConfigError, match=rf"'cuda:{n}' is not available: torch sees {n} CUDA GPU"):
        _resolve(f"device=cuda:{n}")
    assert _resolve("device=cuda:0").device == "cuda:0"


def test_good_values_are_kept_and_normalised():
    cfg = resolve(
        {
            "model": "fcos_r18_fpn",
            **parse_set(
                [
                    "lr=1e-4",
                    "protocols=coco,voc07,coco",
                    "eval_before=true",
                    "model_kwargs.min_size=320",
                    "ema_decay=0",
                    "epochs=3",
                    "model_kwargs.frozen_bn=null",
                    "device=cpu",
                ]
            ),
        }
    )
    assert cfg.lr == pytest.approx(1e-4) and isinstance(cfg.lr, float)  # YAML reads 1e-4 as a string
    assert cfg.protocols == ["coco", "voc07"] and cfg.eval_before == "true"
    assert cfg.model_kwargs == {"min_size": 320, "frozen_bn": None} and cfg.epochs == 3


def test_detr_knobs_are_checked_by_their_types():
    with pytest.raises(ConfigError) as err:
        _resolve("model_kwargs.num_queries=many", model="detr_r18")
    assert str(err.value) == "config key 'model_kwargs.num_queries': 'many' is not an integer"
    assert _resolve("model_kwargs.num_queries=50", model="detr_r18").model_kwargs["num_queries"] == 50


def test_models_outside_the_catalogue_keep_their_kwargs():
    cfg = resolve({"model": "tiny_fcos", "model_kwargs": {"anything": "goes"}}, family="fcos")
    assert cfg.model_kwargs == {"anything": "goes"}


def test_every_field_is_checked():
    # A field whose annotation names a type the checker skips would accept anything.
    checked = {"str", "int", "float", "bool", "list", "dict", "None"}
    for name, f in FIELDS.items():
        assert {t.strip() for t in str(f.type).split("|")} <= checked, name


def test_protocol_names_match_the_evaluator():
    from detlab.evaluation.evaluator import PROTOCOLS as EVALUATOR

    assert PROTOCOLS == EVALUATOR


def test_bad_value_in_a_yaml_file(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("epochs: true\n")
    argv = [
        "train",
        "--data",
        str(tmp_path / "missing"),
        "--model",
        "fcos_r18_fpn",
        "--out",
        str(tmp_path / "r"),
        "--config",
        str(config),
    ]
    assert main(argv) == 2
    assert capsys.readouterr().err == "detlab: config key 'epochs': true is not an integer ≥ 1\n"
    assert not (tmp_path / "r").exists()  # nothing was created either


@pytest.mark.parametrize("item,message", [BAD[0], BAD[14], BAD[17]], ids=["ema_decay", "device", "metric"])
def test_end_to_end_before_any_data_is_read(tmp_path, item, message):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "detlab",
            "train",
            "--data",
            str(tmp_path / "no_such_data"),
            "--model",
            "fcos_r18_fpn",
            "--out",
            str(tmp_path / "run"),
            "--set",
            item,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr == f"detlab: {message}\n"
