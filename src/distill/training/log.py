"""What a run tells the person watching it: JSON lines, TensorBoard events, and progress on stderr.

Every loop calls the same four methods and nothing else:

    log.phase("sync", total_steps=472, batch_size=512)     # at the top of a loop
    log.step({"phase": "sync", "step": 0, "epoch": 0, "lambda": 0.0, "lr": 1e-3, "L_s": ..., ...})  # + "seconds"
    log.evaluation({"phase": "sync", "model": "student", "epoch": 0, "step": 118, "auc": ...})
    log.info("training the baseline")

Written to the run directory:
    steps.jsonl, evals.jsonl     one JSON object per record (the plain log; `distill report` reads it)
    events.out.tfevents.*        TensorBoard: `<phase>/<term>` per step, `valid_<metric>/<model>` per
                                 evaluation (one chart per metric holds teacher, student and baseline
                                 in the Custom Scalars tab), so `tensorboard --logdir runs/` just works.

On stderr: a rich progress bar per phase on a terminal (steps, samples/s, smoothed loss terms, λ);
elsewhere (CI, a file) a plain line at every tenth of a phase or every minute, whichever comes first.
`step` is called every optimizer step, so it stays cheap: buffered file writes, no flush, the bar
redrawn at most ten times a second, TensorBoard points thinned to about 1000 per curve and phase.
`flush` (called before every checkpoint is written) puts everything logged so far on disk, and on a
resume `trim_events` drops the TensorBoard points logged after the checkpoint: each step once.
"""
from __future__ import annotations

import json
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, TypeVar

T = TypeVar("T")

# Fields of a step record that are bookkeeping, not curves.
NOT_SCALARS = ("phase", "step", "epoch", "model", "seconds")
PLAIN_EVERY_SECONDS = 60.0
BAR_EVERY_SECONDS = 0.1
TB_POINTS = 1000  # per curve and phase, at most about this many TensorBoard points
EMA = 0.1  # smoothing of the loss terms shown live; the files keep the raw values


@dataclass
class _Phase:
    name: str
    total: int
    batch_size: int
    epochs: int | None
    unit: str = "steps"  # what `done` and `total` count: optimizer steps, or rows (inference)
    first: int = 0  # steps done before this process started (resumed): not part of the rate
    done: int = 0
    t0: float = field(default_factory=time.perf_counter)
    epoch: int = 0
    smooth: dict[str, float] = field(default_factory=dict)
    next_line: int = 0  # plain mode: the step count at which the next line is due
    last_line: float = field(default_factory=time.perf_counter)
    last_line_at: int = 0  # plain mode: `done` when the last line was printed
    last_draw: float = 0.0
    task: Any = None  # the rich task id

    def rate(self) -> float:
        """Samples per second so far (the last batch may be short: close enough for a rate)."""
        return (self.done - self.first) * self.batch_size / max(time.perf_counter() - self.t0, 1e-9)

    def terms(self) -> str:
        # λ only where there is a distillation term to weight; lr is in the files, not worth the width
        shown = [f"λ {v:.2f}" if k == "lambda" else f"{k} {v:.3f}" for k, v in self.smooth.items()
                 if k != "lr" and (k != "lambda" or "L_d" in self.smooth)]
        return "  ".join(shown)

    def where(self) -> str:
        epoch = f"epoch {self.epoch + 1}/{self.epochs}  " if self.epochs else ""
        label = "step" if self.unit == "steps" else self.unit
        return f"{epoch}{label} {self.done:,}/{self.total:,} ({100 * self.done / max(self.total, 1):.0f}%)"


@dataclass
class RunLog:
    """Per-step and per-evaluation records of a run, plus progress for the person watching.

    `directory` None keeps nothing on disk; `quiet` shows nothing; `tty` None asks stderr whether it
    is a terminal (a progress bar) or not (plain lines); `tensorboard` False skips the event file.
    """

    directory: Path | None = None
    quiet: bool = False
    tty: bool | None = None
    tensorboard: bool = True
    _files: dict[str, Any] = field(default_factory=dict)
    _t0: float = field(default_factory=time.perf_counter)
    _phase: _Phase | None = None
    _progress: Any = None  # rich.progress.Progress while a bar is live
    _writer: Any = None  # SummaryWriter, opened on first use
    _tb_failed: bool = False
    _layout_written: bool = False

    def __post_init__(self) -> None:
        if self.tty is None:
            self.tty = sys.stderr.isatty()

    # ------------------------------------------------------------------ what the loops call

    def phase(self, name: str, total_steps: int, batch_size: int, epochs: int | None = None,
              start: int = 0) -> None:
        """A new stretch of work of `total_steps` steps of `batch_size` rows (ends the previous one);
        `start`: steps already done (a resumed run)."""
        self._end_phase()
        p = self._phase = _Phase(name, max(int(total_steps), 1), batch_size, epochs, first=start, done=start)
        p.next_line = (start // self._line_every(p) + 1) * self._line_every(p)
        p.last_line_at = start
        if self.quiet:
            return
        if self.tty:
            if self._progress is None:
                self._progress = _make_progress()
                self._progress.start()
            p.task = self._progress.add_task(name, total=p.total, completed=start, info="")

    def step(self, record: dict[str, Any]) -> None:
        """`seconds` (wall time since the phase started in this process) is added, so a step's cost
        can be read off steps.jsonl."""
        p = self._phase
        if p is not None:
            record = {**record, "seconds": round(time.perf_counter() - p.t0, 6)}
        self._write("steps.jsonl", record)
        phase = record.get("phase", "train")
        scalars = {k: v for k, v in record.items() if k not in NOT_SCALARS and isinstance(v, (int, float))}
        step = record.get("step", 0)
        # TensorBoard keeps ~1000 points per curve anyway, and each add_scalar costs ~0.1 ms:
        # thin long phases so fast models are not slowed down (steps.jsonl keeps every step).
        if p is None or step % max(1, p.total // TB_POINTS) == 0:
            self._scalars({f"{phase}/{k}": v for k, v in scalars.items()}, step)
        if p is None or self.quiet:
            return
        p.done = record.get("step", p.done) + 1
        p.epoch = record.get("epoch", p.epoch)
        for k, v in scalars.items():
            p.smooth[k] = v if k not in p.smooth or k in ("lambda", "lr") else (1 - EMA) * p.smooth[k] + EMA * v
        self._show(p)
        if p.done >= p.total:  # said here, before the phase's last evaluation, rather than after it
            self._end_phase()

    def evaluation(self, record: dict[str, Any]) -> None:
        self._write("evals.jsonl", record)
        scores = {k: v for k, v in record.items() if k not in NOT_SCALARS and isinstance(v, (int, float))}
        model = record.get("model", record.get("phase", "model"))
        if not self._layout_written:
            self._custom_layout(list(scores))
        self._scalars({f"valid_{k}/{model}": v for k, v in scores.items()}, record.get("step", 0))
        shown = " ".join(f"{k}={v:.4f}" for k, v in scores.items())
        phase = record.get("phase", model)
        who = "valid" if phase == model else f"valid {model}"
        self.info(f"[{phase}] {who} at step {record.get('step', 0)} (epoch {record.get('epoch', 0) + 1}): {shown}")

    def info(self, message: str) -> None:
        if self.quiet:
            return
        line = f"{time.perf_counter() - self._t0:7.1f}s  {message}"
        if self._progress is not None:
            self._progress.console.print(line, markup=False, highlight=False)  # above the live bar
        else:
            print(line, file=sys.stderr, flush=True)

    def track(self, batches: Iterable[T], name: str, total_rows: int) -> Iterator[T]:
        """Iterate `batches` (anything with a len) as one phase counted in rows, e.g. caching soft labels."""
        self.phase(name, total_rows, batch_size=1)
        p = self._phase
        if p is not None:
            p.unit = "rows"
        for batch in batches:
            yield batch
            if p is not None and not self.quiet:
                p.done += len(batch)  # type: ignore[arg-type]
                self._show(p)
        self._end_phase()

    def flush(self) -> None:
        """Everything logged so far onto the disk (a checkpoint is about to record this moment)."""
        for f in self._files.values():
            f.flush()
            os.fsync(f.fileno())
        if self._writer is not None:
            self._writer.flush()  # waits for the writer's thread to drain its queue

    def close(self) -> None:
        self._end_phase()
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        # Everything is closed even when a write fails (a full disk); the first failure is raised after.
        failed: BaseException | None = None
        for f in [*self._files.values(), self._writer]:
            try:
                if f is not None:
                    f.close()
            except Exception as e:
                failed = failed or e
        self._files.clear()
        self._writer = None
        if failed is not None:
            raise failed

    # ------------------------------------------------------------------ files

    def _write(self, name: str, record: dict[str, Any]) -> None:
        if self.directory is None:
            return
        try:
            f = self._files.get(name)
            if f is None:
                f = self._files[name] = open(self.directory / name, "a")
            f.write(json.dumps(record) + "\n")
        except OSError as e:  # a full disk, met when the buffer is written out: one line, not a traceback
            from distill.training.checkpoint import write_failed
            raise write_failed(self.directory / name, e) from None

    def _tb(self) -> Any:
        if self._writer is None and not self._tb_failed and self.tensorboard and self.directory is not None:
            try:  # imported here: torch's tensorboard module pulls in the tensorboard package
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                self._tb_failed = True
                self.info("tensorboard is not installed: no TensorBoard events (pip install tensorboard)")
                return None
            # flush_secs: the writer's own thread flushes; nothing here waits on the disk per step
            self._writer = SummaryWriter(log_dir=str(self.directory), flush_secs=30)
            _quiet_tensorboard_thread()
        return self._writer

    def _scalars(self, values: dict[str, float], step: int) -> None:
        writer = self._tb()
        if writer is not None:
            try:
                for tag, v in values.items():
                    writer.add_scalar(tag, v, step)
            except OSError as e:  # the writer's thread met a full disk; it says so at the next add
                from distill.training.checkpoint import write_failed
                raise write_failed(Path(writer.get_logdir()) / "events.out.tfevents.*", e) from None

    def _custom_layout(self, metrics: list[str]) -> None:
        """One chart per validation metric with every model on it (TensorBoard's Custom Scalars)."""
        writer = self._tb()
        self._layout_written = True
        if writer is not None and metrics:
            writer.add_custom_scalars({"validation": {m: ["Multiline", [f"valid_{m}/.*"]] for m in metrics}})

    # ------------------------------------------------------------------ progress

    @staticmethod
    def _line_every(p: _Phase) -> int:
        return max(1, -(-p.total // 10))

    def _show(self, p: _Phase) -> None:
        now = time.perf_counter()
        if self._progress is not None and p.task is not None:
            if now - p.last_draw >= BAR_EVERY_SECONDS or p.done >= p.total:
                p.last_draw = now
                desc = f"{p.name} epoch {p.epoch + 1}/{p.epochs}" if p.epochs else p.name
                self._progress.update(p.task, completed=p.done, description=desc,
                                      info=f"{p.rate():,.0f} samples/s  {p.terms()}")
        elif not self.tty and ((p.done >= p.next_line and p.done - p.last_line_at >= self._line_every(p) // 2)
                               or now - p.last_line >= PLAIN_EVERY_SECONDS):
            # a tenth of the phase, or a minute on a slow one; a milestone just after a timed line is skipped
            p.last_line, p.last_line_at = now, p.done
            while p.next_line <= p.done:
                p.next_line += self._line_every(p)
            self.info(f"[{p.name}] {p.where()}  {p.rate():,.0f} samples/s  {p.terms()}".rstrip())

    def _end_phase(self) -> None:
        p, self._phase = self._phase, None
        if p is None or self.quiet:
            return
        if self._progress is not None and p.task is not None:
            self._progress.update(p.task, completed=p.done, info=f"{p.rate():,.0f} samples/s  {p.terms()}")
            self._progress.stop_task(p.task)
        elif not self.tty:
            seconds = time.perf_counter() - p.t0
            early = f" of {p.total:,} (stopped early)" if p.done < p.total and p.unit == "steps" else ""
            self.info(f"[{p.name}] done: {p.done - p.first:,} {p.unit}{early} in {seconds:.1f}s ({p.rate():,.0f} samples/s)")


def _quiet_tensorboard_thread() -> None:
    """TensorBoard's writer thread re-raises a failed write (a full disk), and Python prints that as a
    traceback; the same error reaches the main thread at the next add or flush, which reports it in
    one line. So the thread's copy is not printed; every other thread's exception still is."""
    previous = threading.excepthook
    if getattr(previous, "_distill", False):
        return

    def hook(args: Any) -> None:
        if type(args.thread).__name__ == "_AsyncWriterThread" and isinstance(args.exc_value, OSError):
            return
        previous(args)

    hook._distill = True  # type: ignore[attr-defined]
    threading.excepthook = hook


def trim_events(directory: Path, until: float) -> None:
    """Keep only the TensorBoard events written up to `until` (a checkpoint's time.time()) in
    `directory`: the steps after it are logged again by the resumed run. TensorBoard's own
    `purge_step` will not do: it hides every tag's points from that step on, and the phases each count
    their steps from 0. The old files become one, under the oldest name so it still sorts first."""
    files = sorted(f for f in directory.glob("events.out.tfevents.*") if not f.name.endswith(".tmp"))
    if not files:
        return
    # The raw loader: its records are copied byte for byte (the other loader rewrites scalars as tensors)
    from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
    from tensorboard.compat.proto import event_pb2
    from tensorboard.summary.writer.record_writer import RecordWriter
    kept = []
    for f in files:
        for raw in RawEventFileLoader(str(f)).Load():  # a record torn by the kill ends the file's events
            e = event_pb2.Event.FromString(raw)
            if not e.HasField("file_version") and e.wall_time <= until:
                kept.append(raw)
    tmp = files[0].with_name(files[0].name + ".tmp")
    try:
        with open(tmp, "wb") as out:
            writer = RecordWriter(out)
            writer.write(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2").SerializeToString())
            for raw in kept:
                writer.write(raw)
            out.flush()
            os.fsync(out.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, files[0])
    for f in files[1:]:  # a kill before this line shows some points twice; never loses one
        f.unlink()


def _make_progress() -> Any:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
    from rich.table import Column
    # On a narrow terminal the loss terms are cut at the right edge; the bar and counts stay whole.
    return Progress(TextColumn("{task.description}", table_column=Column(no_wrap=True, min_width=18)),
                    BarColumn(bar_width=16), MofNCompleteColumn(table_column=Column(no_wrap=True, min_width=9)),
                    TimeRemainingColumn(compact=True),
                    TextColumn("{task.fields[info]}", table_column=Column(no_wrap=True, overflow="ellipsis", ratio=1)),
                    console=Console(stderr=True), refresh_per_second=5, expand=True)
