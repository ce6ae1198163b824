"""detlab bench: sane, self-consistent figures on tiny models; the stage clock; the CLI."""

from __future__ import annotations

import time

import pytest
import torch
from conftest import tiny_faster_rcnn

from detlab.bench import StageClock, format_report, run_bench, spread, stage_probes
from detlab.errors import ConfigError


def _check_backend(r: dict, batch: int) -> None:
    lat = r["latency_ms"]
    assert 0 < lat["p10"] <= lat["median"] <= lat["p90"]
    assert r["per_image_ms"] == pytest.approx(lat["median"] / batch)
    assert r["throughput_ips"] == pytest.approx(batch * 1000 / lat["median"])
    assert r["peak_mem_mb"] is not None and r["peak_mem_mb"] >= 0


def test_run_bench_eager_and_onnx_fields():
    model = tiny_faster_rcnn()
    result = run_bench(model, size=(96, 128), batch=2, threads=2, iters=4, warmup=1, device="cpu", onnx=True)
    assert (result["device"], result["batch"], result["size"], result["threads"]) == ("cpu", 2, [96, 128], 2)
    _check_backend(result["eager"], 2)
    _check_backend(result["onnx"], 2)
    stages = result["eager"]["stages_ms"]
    assert set(stages) == {"total", "preprocess", "forward", "postprocess", "proposals"}
    assert stages["postprocess"]["median"] > 0 and stages["preprocess"]["median"] > 0
    # the stages partition each call: their medians add up to the total median within noise
    parts = stages["preprocess"]["median"] + stages["forward"]["median"] + stages["postprocess"]["median"]
    assert parts == pytest.approx(stages["total"]["median"], rel=0.15, abs=2.0)
    assert (
        stages["postprocess"]["median"] + stages["forward"]["median"] <= stages["total"]["median"] * 1.15 + 2
    )
    assert (
        stages["proposals"]["median"] <= stages["forward"]["median"] * 1.15 + 2
    )  # RPN NMS is inside forward
    assert 0 < result["eager"]["postprocess_share"] < 1
    # the same detections come out of both backends (noise input, fixed seed)
    assert result["eager"]["detections_per_image"] == result["onnx"]["detections_per_image"] > 0
    assert result["onnx_speedup"] == pytest.approx(
        result["eager"]["latency_ms"]["median"] / result["onnx"]["latency_ms"]["median"]
    )
    text = format_report(result)
    assert "eager" in text and "onnx vs eager" in text and "postprocess share" in text


def test_stage_clock_counts_nested_stages_once():
    clock = StageClock()

    def inner():
        time.sleep(0.01)

    timed_inner = clock.wrap(inner, "postprocess")

    def outer():
        time.sleep(0.01)
        timed_inner()

    clock.wrap(outer, "preprocess")()
    assert set(clock.times) == {"preprocess"}
    assert clock.times["preprocess"] >= 0.02
    timed_inner()
    assert 0.01 <= clock.times["postprocess"] < clock.times["preprocess"]


def test_stage_probes_find_torchvision_and_detr_stages():
    names = {(type(o).__name__, n, s) for o, n, s in stage_probes(tiny_faster_rcnn())}
    assert names == {
        ("GeneralizedRCNNTransform", "forward", "preprocess"),
        ("GeneralizedRCNNTransform", "postprocess", "postprocess"),
        ("RegionProposalNetwork", "filter_proposals", "proposals"),
        ("RoIHeads", "postprocess_detections", "postprocess"),
    }


def test_spread_hand_case():
    s = spread([i / 1000 for i in range(1, 11)])  # 1..10 ms
    assert s["median"] == pytest.approx(5.5)
    assert s["p10"] == pytest.approx(1.9) and s["p90"] == pytest.approx(9.1)
    assert spread([0.002]) == {"median": 2.0, "p10": 2.0, "p90": 2.0}


def test_bad_arguments_are_config_errors():
    with pytest.raises(ConfigError, match="iters"):
        run_bench(tiny_faster_rcnn(), size=64, iters=0)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            run_bench(tiny_faster_rcnn(), size=64, iters=1, device="cuda")


def test_cli_bench_catalogue_model(capsys):
    pytest.importorskip("detlab.models.catalogue")
    from detlab.cli import main

    rc = main(
        [
            "bench",
            "--model",
            "ssdlite_effl0",
            "--num-classes",
            "3",
            "--size",
            "128",
            "--iters",
            "2",
            "--warmup",
            "0",
            "--threads",
            "2",
            "--device",
            "cpu",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0
    assert "ssdlite_effl0 (ssd)" in out and "eager" in out and "postprocess share" in out


def test_cli_bench_on_real_images(capsys, bccd):
    from detlab.cli import main

    rc = main(
        [
            "bench",
            "--model",
            "ssdlite_effl0",
            "--num-classes",
            "3",
            "--iters",
            "1",
            "--warmup",
            "0",
            "--threads",
            "2",
            "--device",
            "cpu",
            "--data",
            f"{bccd}:test",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0
    assert f"inputs: 4 images of {bccd}:test, cycled" in out
    assert "batch 1 × [3, 480, 640]" in out  # the BCCD image itself, not noise of the model's size
