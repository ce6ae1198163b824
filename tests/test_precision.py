"""Mixed-precision inference: the network in bf16, decoding and boxes in float32."""

from __future__ import annotations

import pytest
import torch
from test_predict import _noise_image, run  # noqa: F401  (module fixture)
from test_report_runfolder import one_thread  # noqa: F401  (autouse fixture)

from detlab.device import cpu_has_native_bf16
from detlab.errors import ConfigError
from detlab.models.catalogue import build_model
from detlab.models.precision import amp_dtype, autocast_network

needs_bf16 = pytest.mark.skipif(not cpu_has_native_bf16(), reason="this CPU has no native bf16")


def _image() -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    image = torch.rand(3, 90, 120, generator=gen) * 0.2
    image[:, 20:60, 30:80] += 0.7  # a bright block: something box-like to fire on
    return image


def _on_bf16_grid(x: torch.Tensor) -> bool:
    return bool((x == x.bfloat16().float()).all())


def test_amp_dtype_choices_and_errors(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert amp_dtype("fp32", cpu) is None
    assert amp_dtype("auto", cpu) is None  # bf16 on a CPU is asked for by name
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)  # e.g. a V100 / T4
    assert amp_dtype("auto", cuda) is torch.float16
    assert amp_dtype("amp", cuda) is torch.float16  # the word earlier versions took, read as auto
    with pytest.raises(ConfigError, match="this GPU has no bf16"):
        amp_dtype("bf16", cuda)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert amp_dtype("bf16", cuda) is torch.bfloat16
    assert amp_dtype("auto", cuda) is torch.bfloat16
    with pytest.raises(ConfigError, match="fp16 on CPU"):
        amp_dtype("fp16", cpu)
    with pytest.raises(ConfigError, match="'int8' is not one of auto, fp32, bf16, fp16"):
        amp_dtype("int8", cpu)


@needs_bf16
@pytest.mark.parametrize(
    "name,knobs",
    [
        ("fcos_r18_fpn", {}),
        ("faster_rcnn_effl0_fpn", {}),
        ("ssdlite_effl0", {}),
        ("detr_r18", {}),
        ("detr_r18", {"query_selection": True}),
    ],
)
def test_network_runs_bf16_and_decoding_stays_float32(name, knobs):
    torch.manual_seed(0)
    size = {"size": 128} if name.startswith("ssd") else {"min_size": 96, "max_size": 128}
    model = build_model(name, 3, weights="none", **size, **knobs).eval()
    image = _image()
    network = [model.get_submodule(n) for n in model.network_modules]
    seen = []  # dtypes of the conv / linear outputs inside the network (a listed module itself returns float32)
    hooks = [
        m.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
        for net in network
        for m in net.modules()
        if m is not net and isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))
    ]
    with torch.inference_mode(), autocast_network(model, torch.bfloat16):
        out = model([image])[0]
    for h in hooks:
        h.remove()
    assert seen and set(seen) == {torch.bfloat16}  # the network's math really ran in bf16
    assert out["boxes"].dtype == out["scores"].dtype == torch.float32 and len(out["boxes"]) > 0
    assert not _on_bf16_grid(out["boxes"])  # decoded in float32, not rounded to bf16's 2^-8 steps
    assert all("forward" not in vars(m) for m in network)  # the modules are restored after the block
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        whole = model([image])[0]  # what plain autocast around the call would give
    if name != "detr_r18":  # DETR's box MLP ends in a float32 sigmoid either way
        assert whole["boxes"].dtype == torch.bfloat16


@needs_bf16
def test_decoding_equals_float32_decoding_of_the_network_outputs():
    """The only difference from a float32 call is the network: decode its (bf16-computed) outputs in float32."""
    torch.manual_seed(0)
    model = build_model("fcos_r18_fpn", 3, weights="none", min_size=96, max_size=128).eval()
    image = _image()
    captured = {}
    head_forward = model.head.forward
    with torch.inference_mode(), autocast_network(model, torch.bfloat16):
        hook = model.head.register_forward_hook(lambda m, i, o: captured.update(o))
        mixed = model([image])[0]
        hook.remove()
    assert all(v.dtype == torch.float32 for v in captured.values())
    model.head.forward = lambda features: captured  # float32 model, the network's outputs replayed
    try:
        with torch.inference_mode():
            replayed = model([image])[0]
    finally:
        del model.head.forward
    assert model.head.forward == head_forward
    torch.testing.assert_close(mixed["boxes"], replayed["boxes"], rtol=0, atol=0)
    torch.testing.assert_close(mixed["scores"], replayed["scores"], rtol=0, atol=0)
    with torch.inference_mode():
        plain = model([image])[0]
    # and the bf16 network stays close to the float32 one on the top detection
    assert mixed["labels"][0] == plain["labels"][0]
    torch.testing.assert_close(mixed["boxes"][0], plain["boxes"][0], rtol=0, atol=2.0)


@needs_bf16
def test_predict_takes_precision(run, tmp_path, capsys):  # noqa: F811
    from detlab.cli import main
    from detlab.predict import Detector

    det = Detector.from_run(run, device="cpu", precision="bf16")
    assert det.amp_dtype is torch.bfloat16
    _noise_image(tmp_path / "x.png", 80, 60, seed=3)
    assert (
        main(
            [
                "predict",
                str(run),
                str(tmp_path / "x.png"),
                "--out",
                str(tmp_path / "o"),
                "--precision",
                "bf16",
                "--score",
                "0",
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert (
        main(
            [
                "predict",
                str(run),
                str(tmp_path / "x.png"),
                "--out",
                str(tmp_path / "o2"),
                "--precision",
                "bf16",
                "--backend",
                "onnx",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "only --backend torch runs mixed precision" in err[0]


def test_one_precision_vocabulary_on_every_command(capsys):
    """train, eval, predict and bench take the config's words; older words are read as today's."""
    from detlab.cli import build_parser
    from detlab.config import PRECISIONS

    parser = build_parser()
    lines = {
        "train": ["train"],
        "eval": ["eval", "RUN"],
        "predict": ["predict", "RUN", "--out", "O"],
        "bench": ["bench", "--model", "fcos_r18_fpn"],
    }
    for command, argv in lines.items():
        for word in PRECISIONS:
            assert parser.parse_args([*argv, "--precision", word]).precision == word, command
        assert parser.parse_args([*argv, "--precision", "amp"]).precision == "auto"
        with pytest.raises(SystemExit):
            parser.parse_args([*argv, "--precision", "int8"])
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].endswith("argument --precision: 'int8' is not one of auto, fp32, bf16, fp16"), err
