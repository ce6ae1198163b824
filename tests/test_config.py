"""Config: --set parsing, unknown keys with the nearest valid one, YAML round trip, recipes, lr scaling."""

from __future__ import annotations

import pytest
import yaml

from detlab.cli import main
from detlab.config import (
    RECIPES,
    TrainConfig,
    apply_overrides,
    effective_lr,
    family_of,
    load_yaml,
    parse_set,
    resolve,
    save_yaml,
)
from detlab.errors import ConfigError


def test_set_values_are_yaml_parsed():
    assert parse_set(
        [
            "lr=0.005",
            "ema=true",
            "milestones=[0.5, 0.9]",
            "precision=bf16",
            "model_kwargs.min_size=320",
            "val=",
            "protocols=coco,voc07",
        ]
    ) == {
        "lr": 0.005,
        "ema": True,
        "milestones": [0.5, 0.9],
        "precision": "bf16",
        "model_kwargs.min_size": 320,
        "val": None,
        "protocols": "coco,voc07",
    }
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        parse_set(["lr"])


def test_unknown_key_names_the_nearest_valid_one():
    with pytest.raises(ConfigError) as err:
        resolve({"model": "fcos_r18_fpn", "learning_rate": 0.1, "bach_size": 2})
    assert "'learning_rate'" in str(err.value) or "'bach_size'" in str(err.value)
    with pytest.raises(ConfigError, match=r"unknown config key 'bach_size'; did you mean 'batch_size'\?"):
        apply_overrides(TrainConfig().to_dict(), {"bach_size": 2}, "--set")
    with pytest.raises(ConfigError, match=r"'model_kwarg\.min_size'; did you mean 'model_kwargs'\?"):
        apply_overrides(TrainConfig().to_dict(), {"model_kwarg.min_size": 2}, "--set")
    with pytest.raises(ConfigError, match="'epochs' is not a dict"):
        apply_overrides(TrainConfig().to_dict(), {"epochs.x": 2}, "--set")


def test_cli_unknown_set_key_is_one_line_error(tmp_path, capsys):
    code = main(
        [
            "train",
            "--data",
            str(tmp_path),
            "--model",
            "fcos_r18_fpn",
            "--out",
            str(tmp_path / "r"),
            "--set",
            "warmup_iter=10",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert err == "detlab: --set: unknown config key 'warmup_iter'; did you mean 'warmup_iters'?\n"


def test_bad_values_are_config_errors():
    with pytest.raises(ConfigError, match="'optimizer': 'adam' is not one of sgd, adamw"):
        resolve({"optimizer": "adam"})
    with pytest.raises(ConfigError, match="'batch_size'.*integer ≥ 1"):
        resolve({"batch_size": 0})
    with pytest.raises(ConfigError, match="'milestones'"):
        resolve({"milestones": [8, 11]})
    with pytest.raises(ConfigError, match="no known family"):
        family_of("yolo_v8")


def test_yaml_round_trip_and_precedence(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: faster_rcnn_r18_fpn\nbatch_size: 8\nmodel_kwargs: {min_size: 320}\n")
    user = {**load_yaml(path), **parse_set(["model_kwargs.max_size=512", "epochs=3"])}
    cfg = resolve(user)
    assert (cfg.batch_size, cfg.epochs, cfg.optimizer, cfg.base_lr) == (
        8,
        3,
        "sgd",
        0.02,
    )  # recipe + YAML + --set
    assert cfg.model_kwargs == {"min_size": 320, "max_size": 512}
    save_yaml(cfg, tmp_path / "out.yaml")
    again = resolve(yaml.safe_load((tmp_path / "out.yaml").read_text()))
    assert again == cfg
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_yaml(bad)


def test_family_recipes_and_lr_scaling():
    frcnn = resolve({"model": "faster_rcnn_r50_fpn", "batch_size": 2})
    assert effective_lr(frcnn) == pytest.approx(0.02 * 2 / 16)
    assert effective_lr(frcnn, world_size=4) == pytest.approx(0.02 * 8 / 16)
    fcos = resolve({"model": "fcos_r18_fpn", "batch_size": 4, "accumulate": 2})
    assert effective_lr(fcos) == pytest.approx(0.01 * 8 / 16) and fcos.clip_grad_norm > 0
    assert resolve({"model": "fcos_r18_fpn", "lr": 0.003}).lr == 0.003
    detr = resolve({"model": "detr_effl0", "weights": "imagenet"})
    assert (detr.optimizer, detr.backbone_lr_mult, detr.clip_grad_norm) == ("adamw", 0.1, 0.1)
    assert effective_lr(detr, world_size=8) == pytest.approx(detr.base_lr)  # AdamW lr is not scaled
    small_data = RECIPES["detr"]  # DETR's small-data recipe is the default
    assert detr.base_lr == small_data["base_lr"] and detr.epochs == small_data["epochs"]
    assert detr.model_kwargs == small_data["model_kwargs"]
    assert (
        resolve({"model": "detr_r18", "weights": "imagenet"}).model == "detr_r18"
    )  # never the recipe's model
    # the recipe freezes the backbone because it is pretrained: a random frozen one is refused
    with pytest.raises(ConfigError, match="train_backbone=false.*--weights imagenet"):
        resolve({"model": "detr_effl0"})
    assert resolve({"model": "detr_effl0", "model_kwargs.train_backbone": True}).weights == "none"
    ssd = resolve({"model": "ssdlite_effl0"})
    assert ssd.schedule == "cosine" and ssd.weight_decay == 4e-5


def test_metric_name_is_checked_up_front():
    with pytest.raises(
        ConfigError, match=r"'coco/ap50' is not a metric detlab computes; did you mean 'coco/AP50'\?"
    ):
        resolve({"metric": "coco/ap50"})
    assert resolve({"metric": "val/loss_classifier"}).metric == "val/loss_classifier"
