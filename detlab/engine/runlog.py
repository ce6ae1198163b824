"""What a run writes while it trains: metrics.jsonl, eval/*.json, progress, TensorBoard, curves.

Only the main process (rank 0) writes; the others get a silent logger.

``metrics.jsonl`` lines (the plots and report modules read exactly these)::

    {"type": "train", "iter", "epoch", "lr", "loss", "loss_<part>": …, "<log>": …, "sec_per_iter", "data_sec"}
    {"type": "eval", "epoch", "iter", "coco/AP": …, "voc07/mAP": …, "val/loss": …, "val/loss_<part>": …}

Train lines hold means over the ``log_every`` steps since the previous line.

Every write goes through :func:`detlab.errors.writing`: a full disk or a read-only
folder is one line naming the file and the cause. :func:`run_lock` keeps a second
``detlab train`` out of a run folder that a live process is training in.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from tqdm import tqdm

from detlab.config import TrainConfig
from detlab.errors import OutputError, writing
from detlab.log import logger

try:
    import fcntl
except ImportError:  # Windows: no flock; runs are not locked there
    fcntl = None

# Metrics shown in the one-line summary after each evaluation and in the before/after table.
HEADLINE = ("coco/AP", "coco/AP50", "coco/AP75", "voc07/mAP", "voc12/mAP", "val/loss")


def _json_default(obj):
    """numpy scalars and arrays → plain JSON values."""
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)


class RunLog:
    """The run's writers. ``enabled=False`` (ranks other than 0) makes every method a no-op.

    Args:
        out: run folder.
        enabled: this process writes.
        cfg: supplies ``log_every``, ``quiet``, ``tensorboard``, ``plots``, ``report``.
        total_iters: optimizer steps of the whole run (progress bar and ETA).
    """

    def __init__(self, out: Path, enabled: bool, cfg: TrainConfig, total_iters: int) -> None:
        self.out, self.enabled, self.cfg, self.total_iters = out, enabled, cfg, total_iters
        self.path = out / "metrics.jsonl"
        self.lines_written = 0
        self.bar: tqdm | None = None
        self.tb = None
        self._window: dict[str, float] = {}
        self._window_n, self._window_sec, self._window_data = 0, 0.0, 0.0
        self._t_start = time.perf_counter()
        self.interactive = enabled and not cfg.quiet and sys.stderr.isatty()

    # --- files -------------------------------------------------------------------

    def start_fresh(self) -> None:
        """Start an empty metrics.jsonl (a new run in this folder)."""
        if self.enabled:
            with writing(self.path, "metrics"):
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self.path.write_text("")
            self._open_tensorboard()

    def resume(self, lines: int) -> None:
        """Keep the first ``lines`` lines of metrics.jsonl: what the resumed checkpoint had logged."""
        self.lines_written = lines
        if not self.enabled:
            return
        kept = self.path.read_text().splitlines(keepends=True)[:lines] if self.path.exists() else []
        with writing(self.path, "metrics"):
            self.path.write_text("".join(kept))
        self._open_tensorboard()

    def state_dict(self) -> dict:
        """The partly filled logging window, saved in checkpoints so a resumed run logs the same means."""
        return {
            "lines": self.lines_written,
            "window": dict(self._window),
            "n": self._window_n,
            "sec": self._window_sec,
            "data": self._window_data,
        }

    def load_state_dict(self, state: dict) -> None:
        self.resume(int(state["lines"]))
        self._window = dict(state["window"])
        self._window_n, self._window_sec, self._window_data = int(state["n"]), state["sec"], state["data"]

    def _append(self, record: dict) -> None:
        self.lines_written += 1
        if self.enabled:
            with writing(self.path, "metrics"), open(self.path, "a") as f:
                f.write(json.dumps(record, default=_json_default) + "\n")

    def write_json(self, rel: str, obj: dict) -> None:
        if self.enabled:
            path = self.out / rel
            with writing(path, "evaluation results"):
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(obj, indent=2, default=_json_default))

    def copy_eval(self, src: str, dst: str) -> None:
        if self.enabled:
            with writing(self.out / "eval" / f"{dst}.json", "evaluation results"):
                shutil.copyfile(self.out / "eval" / f"{src}.json", self.out / "eval" / f"{dst}.json")

    def _open_tensorboard(self) -> None:
        if not self.cfg.tensorboard:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            self.note("tensorboard: not installed (pip install tensorboard); logging to metrics.jsonl only")
            return
        self.tb = SummaryWriter(str(self.out / "tensorboard"))

    # --- training steps ----------------------------------------------------------

    def step(
        self, iteration: int, epoch: int, lr: float, parts: dict[str, float], data_sec: float, step_sec: float
    ) -> None:
        """Account one optimizer step; every ``log_every`` steps write a train line."""
        for k, v in parts.items():
            self._window[k] = self._window.get(k, 0.0) + v
        self._window_n += 1
        self._window_sec += step_sec
        self._window_data += data_sec
        if not self.enabled:
            return
        self._update_bar(iteration, epoch, parts)
        if iteration % self.cfg.log_every == 0 or iteration == self.total_iters:
            self._flush_window(iteration, epoch, lr)

    def _flush_window(self, iteration: int, epoch: int, lr: float) -> None:
        n = max(1, self._window_n)
        means = {k: v / n for k, v in self._window.items()}
        record = {
            "type": "train",
            "iter": iteration,
            "epoch": epoch,
            "lr": lr,
            "loss": means.pop("loss", 0.0),
            **dict(sorted(means.items())),
            "sec_per_iter": self._window_sec / n,
            "data_sec": self._window_data / n,
        }
        self._append(record)
        if self.tb is not None:
            for k, v in record.items():
                if k not in ("type", "iter", "epoch"):
                    self.tb.add_scalar(f"train/{k}", v, iteration)
        if not self.interactive and not self.cfg.quiet:
            eta = (self.total_iters - iteration) * record["sec_per_iter"]
            parts = " ".join(f"{k.removeprefix('loss_')} {v:.3f}" for k, v in sorted(means.items()))
            print(
                f"epoch {epoch} iter {iteration}/{self.total_iters} loss {record['loss']:.4f} ({parts}) "
                f"lr {lr:.3g} {record['sec_per_iter']:.2f}s/it ETA {_hms(eta)}",
                file=sys.stderr,
                flush=True,
            )
        self._window, self._window_n, self._window_sec, self._window_data = {}, 0, 0.0, 0.0

    def _update_bar(self, iteration: int, epoch: int, parts: dict[str, float]) -> None:
        if not self.interactive:
            return
        if self.bar is None:
            self.bar = tqdm(total=self.total_iters, initial=iteration - 1, unit="it", dynamic_ncols=True)
        self.bar.set_description(f"epoch {epoch}/{self.cfg.epochs}")
        self.bar.set_postfix(
            {k.removeprefix("loss_"): f"{v:.3f}" for k, v in parts.items() if k.startswith("loss")},
            refresh=False,
        )
        self.bar.update(1)

    # --- evaluations -------------------------------------------------------------

    def evaluation(
        self,
        epoch: int,
        iteration: int,
        flat: dict,
        result: dict,
        tag: str,
        seconds: float,
        records=None,
        detections: dict | None = None,
    ) -> None:
        """Write the eval line, ``eval/<tag>.json``, TensorBoard and refreshed curves.

        With the validation ``records`` and their ``detections`` (``image_id -> boxes, scores,
        labels``), TensorBoard also gets per-class PR curves and drawn images
        (:mod:`detlab.engine.tensorboard`).
        """
        self._append({"type": "eval", "epoch": epoch, "iter": iteration, **flat})
        if not self.enabled:
            return
        self.write_json(f"eval/{tag}.json", {"epoch": epoch, "iteration": iteration, **result})
        if self.tb is not None:
            from detlab.engine.tensorboard import log_evaluation

            log_evaluation(self.tb, flat, iteration, records, detections)
        shown = " ".join(f"{k} {flat[k]:.4f}" for k in HEADLINE if k in flat)
        self.note(
            f"eval {'before training' if tag == 'before' else f'epoch {epoch}'}: {shown} ({seconds:.1f}s)"
        )
        self._refresh_plots()

    def _refresh_plots(self) -> None:
        if not self.cfg.plots:
            return
        from detlab.report.plots import plot_training_curves

        with writing(self.out / "plots", "training curves"):
            plot_training_curves(self.path, self.out / "plots")

    # --- messages and the end ----------------------------------------------------

    def note(self, message: str) -> None:
        """One line to the user (above the progress bar when there is one)."""
        if not self.enabled or self.cfg.quiet:
            return
        if self.bar is not None:
            self.bar.write(message, file=sys.stderr)
        else:
            logger.info(message)

    def finish(self, metrics: dict, before: dict | None, cfg: TrainConfig) -> None:
        """Close the bar; print before/after; write the HTML report (``cfg.report``)."""
        self._close_bar()
        if not self.enabled:
            return
        if metrics:
            rows = [k for k in HEADLINE if k in metrics]
            lines = [
                f"  {k:<10} {before[k]:.4f} → {metrics[k]:.4f}"
                if before and k in before
                else f"  {k:<10} {metrics[k]:.4f}"
                for k in rows
            ]
            self.note(
                ("before → after (best checkpoint):" if before else "best checkpoint:")
                + "\n"
                + "\n".join(lines)
            )
        self.note(f"trained in {_hms(time.perf_counter() - self._t_start)}; run folder {self.out}")
        if cfg.report:
            self._write_report()

    def _write_report(self) -> None:
        from detlab.report.html import write_report

        try:
            path = write_report(self.out)
        except Exception as e:  # a finished run must not be lost to a report problem
            self.note(
                f"report: could not be written ({type(e).__name__}: {e}); `detlab report {self.out}` retries"
            )
            return
        self.note(f"report: {path}")

    def _close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def close(self) -> None:
        self._close_bar()
        if self.tb is not None:
            self.tb.close()
            self.tb = None


LOCK_NAME = "train.lock"
_HELD: dict[Path, list] = {}  # run folder → [open lock file, nesting depth] of this process


@contextlib.contextmanager
def run_lock(out: str | Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``RUN/train.lock`` for the block; re-entrant within a process.

    The kernel drops a flock when its process dies, so a killed run leaves no stale lock;
    the file keeps the holder's pid and host only to say who holds a live one.

    Raises:
        OutputError: another process holds the run folder (the message names it), or the
            folder cannot be created.
    """
    out = Path(out)
    key = out.resolve()
    if key in _HELD:
        _HELD[key][1] += 1
        try:
            yield
        finally:
            _HELD[key][1] -= 1
        return
    handle = _acquire(out)
    _HELD[key] = [handle, 1]
    try:
        yield
    finally:
        del _HELD[key]
        if handle is not None:
            handle.close()


def _acquire(out: Path):
    path = out / LOCK_NAME
    with writing(out, "run folder"):
        out.mkdir(parents=True, exist_ok=True)
        handle = open(path, "a+")  # not "w": the holder's line must survive until the lock is ours
    if fcntl is None:
        return handle
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise OutputError(
            f"{out}: run folder is in use by a training run ({holder}); wait for it to end, stop it, "
            f"or train into another --out"
        ) from None
    except OSError:  # file systems without flock (some network mounts): train unlocked rather than not at all
        return handle
    with writing(path, "run lock"):
        handle.seek(0)
        handle.truncate()
        handle.write(
            f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}\n"
        )
        handle.flush()
    return handle


def _hms(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"
