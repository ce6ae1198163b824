"""The ``detlab`` command line: argparse → plain function calls, no logic here.

Each subcommand has one ``_add_<name>`` (its arguments) and one ``_run_<name>``
(the call it makes), paired in the literal :data:`COMMANDS`. Heavy imports happen
inside ``_run_*`` so ``detlab --help`` stays fast.
"""

from __future__ import annotations

import argparse
import sys

from detlab.errors import DetlabError


def _add_data_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument(
        "--split", default=None, help="split name (default: train, or the only one); or use DATA:split"
    )
    p.add_argument(
        "--images", default=None, help="image folder, when it cannot be found from a COCO JSON's location"
    )
    p.add_argument(
        "--classes",
        default=None,
        help="class names, comma separated or a text file (one per line); order is kept",
    )


def _precision(word: str) -> str:
    from detlab.config import precision_word

    try:
        return precision_word(word, "--precision")
    except DetlabError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("--precision: ")) from None


def _add_precision(p: argparse.ArgumentParser, default: str | None, note: str = "") -> None:
    """``--precision`` with detlab's one set of words (:data:`detlab.config.PRECISIONS`)."""
    p.add_argument(
        "--precision",
        default=default,
        type=_precision,
        metavar="{auto,fp32,bf16,fp16}",
        help="network precision; auto: bf16 (else fp16) on CUDA, fp32 on CPU; bf16 on CPU needs native "
        f"bf16; decoding and boxes stay float32{note}",
    )


# --- demo ---------------------------------------------------------------------


def _add_demo(sub) -> None:
    p = sub.add_parser(
        "demo", help="synthetic shapes dataset → train a small model on CPU → evaluate → report (≤ 5 min)"
    )
    p.add_argument("--out", default="demo_out", help="output folder (dataset and run)")
    p.add_argument("--quick", action="store_true", help="a much shorter schedule, for smoke tests")


def _run_demo(args) -> int:
    from detlab.demo import run_demo

    return run_demo(out=args.out, quick=args.quick)


# --- check / convert / show ---------------------------------------------------


def _add_check(sub) -> None:
    p = sub.add_parser("check", help="dataset doctor: every problem with file + field, counts, histograms")
    p.add_argument("data", help="dataset path (VOC, COCO JSON, YOLO, or image folder with XML)")
    _add_data_args(p)


def _run_check(args) -> int:
    from detlab.data.checks import check_command

    return check_command(args.data, split=args.split, images=args.images, classes=args.classes)


def _add_convert(sub) -> None:
    p = sub.add_parser("convert", help="lossless conversion between VOC, COCO and YOLO")
    p.add_argument("src", help="source dataset path")
    p.add_argument("dst", help="destination folder (or .json file for --to coco)")
    p.add_argument("--to", required=True, choices=["coco", "voc", "yolo"])
    _add_data_args(p)


def _run_convert(args) -> int:
    from detlab.data.convert import convert_command

    return convert_command(
        args.src, args.dst, to=args.to, split=args.split, images=args.images, classes=args.classes
    )


def _add_show(sub) -> None:
    p = sub.add_parser("show", help="draw ground truth boxes on N images")
    p.add_argument("data")
    p.add_argument("--out", required=True)
    p.add_argument("--n", type=int, default=8, help="number of images")
    _add_data_args(p)


def _run_show(args) -> int:
    from detlab.report.draw import show_command

    return show_command(
        args.data, out=args.out, n=args.n, split=args.split, images=args.images, classes=args.classes
    )


# --- models -------------------------------------------------------------------


def _add_models(sub) -> None:
    p = sub.add_parser(
        "models", help="the model catalogue: params, GFLOPs, pretrained weights and their availability"
    )
    p.add_argument(
        "--flops",
        action="store_true",
        help="count the GFLOPs not counted before (about a minute on 2 CPU cores; kept for next time)",
    )


def _run_models(args) -> int:
    from detlab.models.catalogue import models_command

    return models_command(flops=args.flops)


# --- split / config -------------------------------------------------------------


def _add_split(sub) -> None:
    p = sub.add_parser(
        "split", help="seeded, class-stratified train/val(/test) split written in the source's own layout"
    )
    p.add_argument("data", help="dataset (DATA, or DATA:split to divide one split)")
    p.add_argument("--val", type=float, required=True, help="share of images for val, e.g. 0.2")
    p.add_argument("--test", type=float, default=0.0, help="share of images for test (default: none)")
    p.add_argument("--seed", type=int, default=0, help="shuffle seed (the same seed gives the same split)")
    p.add_argument("--force", action="store_true", help="replace split files that already exist")


def _run_split(args) -> int:
    from detlab.data.split import split_command

    return split_command(args.data, val=args.val, test=args.test, seed=args.seed, force=args.force)


def _add_config(sub) -> None:
    p = sub.add_parser("config", help="every config key with its default and comment; a model's knobs")
    p.add_argument(
        "--model", default=None, help="also that model's recipe defaults and its model_kwargs knobs"
    )


def _run_config(args) -> int:
    from detlab.config_list import config_command

    return config_command(args.model)


# --- train --------------------------------------------------------------------


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train or fine-tune a detector")
    p.add_argument("--data", default=None, help="training data (DATA or DATA:split)")
    p.add_argument("--val", default=None, help="validation data (default: the same source's val/test split)")
    p.add_argument("--model", default=None, help="catalogue name (see `detlab models`)")
    p.add_argument("--out", default=None, help="run folder")
    p.add_argument("--weights", default=None, help="none | imagenet | coco | PATH")
    p.add_argument("--config", default=None, help="YAML config file")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key (repeatable); `detlab config [--model NAME]` lists every key and knob",
    )
    p.add_argument("--resume", default=None, metavar="RUN", help="continue a run exactly where it stopped")
    p.add_argument(
        "--time",
        default=None,
        metavar="DURATION",
        help="wall-time budget for the whole run (90s, 10m, 2h, 1h30m): steps and an evaluation are timed "
        "and the epochs planned to end on time, schedule completed (config key time_budget)",
    )
    _add_precision(p, None, " (config key precision; default auto)")


def _run_train(args) -> int:
    from detlab.engine.train import train_command

    return train_command(args)


# --- tune ---------------------------------------------------------------------

TUNE_EPILOG = """\
default space (--space replaces it):
  base_lr       log-uniform over x0.25..x4 the family recipe's (detlab config --model NAME);
                not searched when --set fixes lr or base_lr
  input size    the family's size knob at x0.8, x1, x1.2 its default, multiples of 32:
                model_kwargs.min_size around the data-aware size (Faster R-CNN, FCOS, RetinaNet)
                or the recipe's (DETR), max_size following; SSD model_kwargs.size
  augmentation  not searched: the config has no strength key (augment names a recipe;
                --space augment=fcos,ssd searches recipes)
--space KEY=LOW:HIGH (uniform), KEY=LOW:HIGH:log, KEY=A,B,C (choices); integer keys sample integers.

Each trial is a `detlab train` run folder OUT/trial_NNN with an even share of what is left of
--time (the budget planner picks its epochs); after each evaluation the run's metric (coco/AP50)
goes to Optuna's MedianPruner, which stops trials worse than the median. Writes OUT/trials.csv,
OUT/study.json and OUT/best.yaml (detlab train --config OUT/best.yaml). Needs the extra:
pip install 'detlab[tune]'."""


def _add_tune(sub) -> None:
    p = sub.add_parser(
        "tune",
        help="hyper-parameter search (Optuna) within one --time; every trial a run folder",
        description="Search learning rate and input size (or --space) within --time; "
        "each trial is a normal `detlab train` run.",
        epilog=TUNE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--data", required=True, help="training data (DATA or DATA:split)")
    p.add_argument("--model", required=True, help="catalogue name (see `detlab models`)")
    p.add_argument("--out", required=True, help="study folder: trial_NNN/, trials.csv, study.json, best.yaml")
    p.add_argument(
        "--time",
        required=True,
        metavar="DURATION",
        help="wall time of the whole study (90s, 10m, 2h, 1h30m), shared out among the trials",
    )
    p.add_argument(
        "--trials", type=int, default=None, help="number of trials (default: one per 2 min of --time, 2-10)"
    )
    p.add_argument(
        "--space",
        action="append",
        default=[],
        metavar="KEY=SPEC",
        help="a searched config key: KEY=LOW:HIGH, KEY=LOW:HIGH:log or KEY=A,B,C (repeatable)",
    )
    p.add_argument("--weights", default=None, help="none | imagenet | coco | PATH")
    p.add_argument("--val", default=None, help="validation data (default: the same source's val/test split)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="fix a config key for every trial (repeatable)",
    )
    p.add_argument("--seed", type=int, default=0, help="the sampler's seed (training keeps config key seed)")


def _run_tune(args) -> int:
    from detlab.tune import tune_command

    return tune_command(args)


# --- eval / predict / report / compare -----------------------------------------


def _add_eval(sub) -> None:
    p = sub.add_parser("eval", help="evaluate a run, or score a COCO results file with --gt/--dets")
    p.add_argument("run", nargs="?", default=None, help="run folder")
    p.add_argument("--data", default=None, help="dataset to evaluate on (default: the run's validation data)")
    p.add_argument("--gt", default=None, help="ground-truth dataset, with --dets")
    p.add_argument("--dets", default=None, help="COCO-format results JSON, with --gt")
    p.add_argument("--protocol", default="coco,voc07,voc12", help="comma list of coco, voc07, voc12")
    p.add_argument("--checkpoint", default="best", help="best | last | PATH")
    p.add_argument(
        "--out", default=None, help="where to write eval/*.json (default: RUN/eval or beside --dets)"
    )
    p.add_argument(
        "--iou", type=float, default=0.5, help="IoU threshold of voc07/voc12, PR curves, confusion and errors"
    )
    p.add_argument("--max-dets", default="1,10,100", help="COCO maxDets, comma list (AP uses the last)")
    p.add_argument("--score", type=float, default=0.5, help="score threshold of the confusion matrix")
    p.add_argument(
        "--no-analysis", action="store_true", help="skip PR curves, confusion matrix and error breakdown"
    )
    p.add_argument("--device", default=None, help="cpu | cuda (default: cuda when available), with RUN")
    p.add_argument("--batch", type=int, default=4, help="images per forward pass, with RUN")
    _add_precision(p, "fp32", "; with RUN")
    _add_data_args(p)


def _run_eval(args) -> int:
    from detlab.evaluation.command import eval_command

    return eval_command(args)


def _add_predict(sub) -> None:
    p = sub.add_parser("predict", help="run a trained model on images, folders or globs")
    p.add_argument("run", help="run folder or checkpoint")
    p.add_argument("sources", nargs="*", help="images, folders or globs (default with --data: its images)")
    p.add_argument("--out", required=True)
    p.add_argument(
        "--score",
        type=float,
        default=None,
        help="keep detections scoring at least this (default 0.5; with --data every detection is "
        "written to detections.json, as evaluation scores them, and 0.5 is what is drawn)",
    )
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--backend", default="torch", choices=["torch", "onnx"])
    _add_precision(p, "fp32")
    p.add_argument("--checkpoint", default="best")
    p.add_argument(
        "--data",
        default=None,
        help="dataset (DATA or DATA:split) whose image and category ids the "
        "results use, so `detlab eval --gt DATA --dets OUT/detections.json` scores them",
    )


def _run_predict(args) -> int:
    from detlab.predict import predict_command

    return predict_command(args)


def _add_report(sub) -> None:
    p = sub.add_parser("report", help="self-contained HTML report of one run")
    p.add_argument("run")
    p.add_argument("--out", default=None, help="HTML path (default: RUN/report.html)")


def _run_report(args) -> int:
    from detlab.report.html import report_command

    return report_command(args.run, out=args.out)


def _add_compare(sub) -> None:
    p = sub.add_parser("compare", help="compare runs: table, curves, per-class AP, disagreement gallery")
    p.add_argument("runs", nargs="+")
    p.add_argument("--out", required=True)
    p.add_argument(
        "--data", default=None, help="dataset to compare on (default: the first run's validation data)"
    )


def _run_compare(args) -> int:
    from detlab.report.compare import compare_command

    return compare_command(args.runs, out=args.out, data=args.data)


# --- bench / export -----------------------------------------------------------


def _add_bench(sub) -> None:
    p = sub.add_parser("bench", help="latency and throughput, eager and ONNX")
    p.add_argument("--model", required=True, help="catalogue name or run folder")
    p.add_argument("--size", default=None, help="input S or H,W (default: the model's shorter side, square)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--device", default=None, help="cpu | cuda (default: cuda when available)")
    _add_precision(p, "fp32")
    # The flag of earlier versions: the device's half precision (bf16 on CPU, fp16 on CUDA).
    p.add_argument("--amp", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--onnx", action="store_true", help="also export and time ONNX Runtime")
    p.add_argument("--warmup", type=int, default=3, help="untimed calls before timing")
    p.add_argument("--num-classes", type=int, default=20, help="classes of a catalogue model (random init)")
    p.add_argument("--checkpoint", default="best", help="with a run folder: best | last | PATH")
    p.add_argument(
        "--data",
        default=None,
        help="time on the first images of this dataset (DATA or DATA:split) instead of noise",
    )


def _run_bench(args) -> int:
    from detlab.bench import bench_command

    return bench_command(args)


def _add_export(sub) -> None:
    p = sub.add_parser("export", help="export a run to ONNX and check it against eager outputs")
    p.add_argument("run")
    p.add_argument("--format", default="onnx", choices=["onnx"])
    p.add_argument("--out", default=None, help="output file (default: RUN/model.onnx)")
    p.add_argument("--checkpoint", default="best")
    p.add_argument("--size", default=None, help="traced input H,W or S (default: the run's training size)")
    p.add_argument(
        "--check",
        default=None,
        metavar="DATA",
        help="dataset whose first images check ONNX against eager (default: the run's val data)",
    )


def _run_export(args) -> int:
    from detlab.export import export_command

    return export_command(args)


# name → (adds its arguments, runs it); the order is the order of `detlab --help`.
COMMANDS = {
    "demo": (_add_demo, _run_demo),
    "check": (_add_check, _run_check),
    "convert": (_add_convert, _run_convert),
    "show": (_add_show, _run_show),
    "models": (_add_models, _run_models),
    "split": (_add_split, _run_split),
    "config": (_add_config, _run_config),
    "train": (_add_train, _run_train),
    "tune": (_add_tune, _run_tune),
    "eval": (_add_eval, _run_eval),
    "predict": (_add_predict, _run_predict),
    "report": (_add_report, _run_report),
    "compare": (_add_compare, _run_compare),
    "bench": (_add_bench, _run_bench),
    "export": (_add_export, _run_export),
}

DESCRIPTION = (
    "Train, fine-tune, evaluate, compare and look at object detectors (Faster R-CNN, DETR, FCOS, SSD) "
    "on VOC, COCO, YOLO and custom data. Start with `detlab demo`; `detlab COMMAND --help` for each command."
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="detlab", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add, _ in COMMANDS.values():
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(COMMANDS[args.command][1](args) or 0)
    except DetlabError as e:
        print(f"detlab: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("detlab: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
