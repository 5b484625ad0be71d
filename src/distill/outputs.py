"""What distill may replace, and how: the one place that decides whether a directory can go.

distill replaces a directory only when it is absent or empty, or carries distill's own mark for
the kind expected there (a run's run.json, a compare's compare.json, an export's manifest.json, a
report's report.md and report.html). It never replaces the working directory or a parent of it,
nor a directory it is reading from (the run being exported or reported). Anything else is refused
with one line naming the path.

Every output is built in `<output>.partial`, locked by the process writing it (a `.distill.lock`
holding its PID, under flock: a dead process's lock is free), then swapped in: the old output is
renamed aside, the new one moved in, and only then is the old one deleted.

    >>> partial = start(Path("runs/a"), "run", replace=True)       # doctest: +SKIP
    >>> ...  # write into partial
    >>> swap(partial, Path("runs/a"))
"""
from __future__ import annotations

import errno
import fcntl
import os
import shutil
import tempfile
from pathlib import Path

from distill.errors import DistillError

LOCK = ".distill.lock"
# what distill writes into a directory of each kind; a finished one carries MARKS, a partial one
# (a run killed before it finished) at least one of PARTIAL_MARKS or the lock file
MARKS = {"run": ("run.json",), "compare": ("compare.json",), "export": ("manifest.json",),
         "report": ("report.md", "report.html")}
PARTIAL_MARKS = {"run": ("config.yaml", "checkpoints"), "compare": ("seed_*",), "export": ("encoders.json",),
                 "report": ("*.png", "report.md")}
ACTION = {"run": "trained", "compare": "written", "export": "written", "report": "written"}

_held: dict[str, int] = {}  # realpath of a locked directory -> the open lock file


def refuse_unsafe(path: Path, protect: tuple[Path, ...] = ()) -> None:
    """Refuse `.`, a parent of the working directory, and `protect` or any directory holding it."""
    here = Path(os.path.realpath(path))
    cwd = Path(os.path.realpath(os.getcwd()))
    if here == cwd or here in cwd.parents:
        raise DistillError(f"{path}: is the working directory or a parent of it; distill will not replace it, choose another output")
    for p in protect:
        p = Path(os.path.realpath(p))
        if here == p:
            raise DistillError(f"{path}: is the run being read; choose another output")
        if here in p.parents:
            raise DistillError(f"{path}: holds the run being read ({p}); choose another output")


def is_ours(path: Path, kind: str, partial: bool = False) -> bool:
    """True when `path` is absent, empty, or carries distill's mark for `kind`."""
    if not path.exists():
        return True
    if not path.is_dir():
        return False
    if not any(path.iterdir()):
        return True
    if partial:
        return (path / LOCK).exists() or any(any(path.glob(m)) for m in PARTIAL_MARKS[kind] + MARKS[kind])
    return all((path / m).is_file() for m in MARKS[kind])


def check_replaceable(path: Path, kind: str, protect: tuple[Path, ...] = ()) -> None:
    """Raise DistillError (one line naming `path`) unless distill may replace `path` with a `kind`."""
    refuse_unsafe(path, protect)
    if path.exists() and not path.is_dir():
        raise DistillError(f"{path}: is a file, not a {kind} directory; choose another output")
    refuse_other_kind(path, kind)
    if not is_ours(path, kind):
        marks = " and ".join(MARKS[kind])
        raise DistillError(f"{path}: holds files distill did not write (no {marks}); distill will not replace it, "
                           f"choose another output")


def refuse_other_kind(path: Path, kind: str) -> None:
    """A directory distill wrote as another kind (a compare where a run goes, ...) is refused by its
    mark, --overwrite or not: a run never replaces a comparison's seeds, nor the other way round."""
    if not path.is_dir() or is_ours(path, kind):
        return
    for other, marks in MARKS.items():
        if other != kind and all((path / m).is_file() for m in marks):
            raise DistillError(f"{path}: is a distill {other} directory ({' and '.join(marks)}), not a {kind}; "
                               f"distill will not replace one kind with another, choose another output")


def start(output: Path, kind: str, replace: bool, protect: tuple[Path, ...] = (),
          keep_checkpoints: bool = False) -> Path:
    """Check `output`, and return a fresh, locked, empty `<output>.partial` to build it in.

    `replace`: may an existing, non-empty `output` of this kind be replaced at the end?
    `keep_checkpoints`: refuse to discard a partial run's checkpoints (point to --resume instead).
    """
    refuse_unsafe(output, protect)
    refuse_other_kind(output, kind)  # before "pass --overwrite": that would not help
    if output.exists() and not replace and (not output.is_dir() or any(output.iterdir())):
        raise DistillError(f"{output}: the output directory exists; choose another `output` or pass --overwrite "
                           f"(overwrite=True from Python) to replace it")
    check_replaceable(output, kind, protect)
    partial = output.with_name(output.name + ".partial")
    if partial.exists():
        if not is_ours(partial, kind, partial=True):
            raise DistillError(f"{partial}: holds files distill did not write; remove or rename it first")
        lock(partial, output, kind)  # refuses while another process writes there
        if keep_checkpoints and any((partial / "checkpoints").glob("ckpt-*.pt")):
            release(partial)
            raise DistillError(f"{partial}: holds the checkpoints of an interrupted run; continue it with "
                               f"--resume {output}, or pass --overwrite to discard them")
        release(partial)
        shutil.rmtree(partial)
    try:
        partial.mkdir(parents=True)
        lock(partial, output, kind)
    except OSError as e:
        if not no_space(e):
            raise
        discard(partial)
        raise DistillError(f"{output}: no space left on device; nothing was written") from None
    return partial


def lock(directory: Path, name: Path, kind: str = "run") -> None:
    """Hold `directory`'s lock file until `release` or `swap` (or this process ends)."""
    key = os.path.realpath(directory)
    if key in _held:  # a lock this process left behind (an earlier call that raised): take it again
        release(directory)
    fd = os.open(directory / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = os.read(fd, 32).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise DistillError(f"{name} is being {ACTION[kind]} by process {pid}") from None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    _held[key] = fd


def release(directory: Path) -> None:
    """Let go of `directory`'s lock (if this process holds it) and remove the lock file."""
    fd = _held.pop(os.path.realpath(directory), None)
    if fd is None:
        return
    try:
        (directory / LOCK).unlink(missing_ok=True)
    except OSError:
        pass
    os.close(fd)


def swap(partial: Path, output: Path) -> None:
    """Put `partial` in `output`'s place: the old output is renamed aside, the new one moved in,
    then the old one deleted; killed at any point, one of the two is whole on disk."""
    key = os.path.realpath(partial)
    old = None
    if output.exists():
        # a fresh empty name beside it: rename(2) replaces an empty directory, and never a user's
        old = Path(tempfile.mkdtemp(prefix=output.name + ".old-", dir=output.parent))
        os.replace(output, old)
    try:
        os.replace(partial, output)
    except BaseException:
        if old is not None:  # put the old one back: the caller discards the partial
            os.replace(old, output)
        raise
    fd = _held.pop(key, None)
    if fd is not None:  # held through the rename: the lock moved with the directory
        (output / LOCK).unlink(missing_ok=True)
        os.close(fd)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def discard(partial: Path) -> None:
    """An output that failed: remove its partial directory and let go of the lock."""
    release(partial)
    shutil.rmtree(partial, ignore_errors=True)


def no_space(e: BaseException) -> bool:
    """A full disk, as Python (errno), Arrow or torch (the message only) report it."""
    # torch.jit.save reports it as a RuntimeError with the C library's message
    return (isinstance(e, OSError) and e.errno == errno.ENOSPC) or "No space left on device" in str(e)


def write_atomic(path: Path, write) -> None:
    """`write(tmp)` to a temporary name beside `path`, then rename: the file appears whole or not at all."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # beside it: os.replace stays on one file system
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
