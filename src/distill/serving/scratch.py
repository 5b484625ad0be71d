"""Where `distill serve RUN` (and `predict RUN`, `embed RUN`) keeps the export it makes of a run
directory while it serves (or scores).

    <tmp>/distill-serve-<uid>/export-<pid>-<random>/   the export (model/), and a marker naming its pid

The directory goes on a normal exit, Ctrl-C and SIGTERM. SIGKILL cannot be caught, so every start
first removes the exports of processes that are gone (only directories with the marker: nothing
else under that folder is touched).

    >>> with scratch_export("runs/demo", "onnx") as source:               # doctest: +SKIP
    ...     model = load_model(source)
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from distill.errors import DistillError

MARKER = ".distill-serve-export"
NAME = re.compile(r"export-(\d+)-\w+")


def scratch_root() -> Path:
    """`<tmp>/distill-serve-<uid>`, private to this user (refused if someone else owns it)."""
    uid = os.getuid() if hasattr(os, "getuid") else 0
    root = Path(tempfile.gettempdir()) / f"distill-serve-{uid}"
    root.mkdir(mode=0o700, exist_ok=True)
    # the temporary folder is shared: a folder of that name made by another user, or a link, could
    # point our exports (and the sweep's deletes) somewhere else
    if root.is_symlink() or (hasattr(os, "getuid") and root.stat().st_uid != uid):
        raise DistillError(f"{root}: not a folder of yours; set TMPDIR to another temporary folder")
    return root


def sweep(root: Path) -> list[Path]:
    """Remove the exports left by distill processes that no longer run; returns them."""
    removed = []
    for d in sorted(root.iterdir()):
        m = NAME.fullmatch(d.name)
        if not m or d.is_symlink() or not d.is_dir() or int(m.group(1)) == os.getpid():
            continue
        try:
            owner = json.loads((d / MARKER).read_text())["pid"]
        except (OSError, ValueError, KeyError, TypeError):
            continue  # not ours, or half made: leave it
        if owner == int(m.group(1)) and not _alive(owner):
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d)
    return removed


@contextmanager
def scratch_export(source: str | Path, fmt: str, towers: bool = False) -> Iterator[Path]:
    """`source` itself unless it is a run directory; then an export of it in the scratch folder,
    removed when the block ends (also on SIGTERM). `towers`: export the two-tower graphs too."""
    source = Path(source)
    if (source / "manifest.json").is_file() or not (source / "config.yaml").is_file():
        yield source  # an export (or not a run: load_model says what it is)
        return
    from distill.serving.export import export
    root = scratch_root()
    sweep(root)
    with sigterm_exits():
        d = Path(tempfile.mkdtemp(prefix=f"export-{os.getpid()}-", dir=root))
        try:
            (d / MARKER).write_text(json.dumps({"pid": os.getpid(), "run": str(source.resolve())}))
            yield export(source, fmt, d / "model", towers=towers)
        finally:
            shutil.rmtree(d, ignore_errors=True)


@contextmanager
def sigterm_exits() -> Iterator[None]:
    """Within the block SIGTERM raises SystemExit, so `finally` blocks run: the scratch export's,
    and `predict`'s partial output even when it scores an export (no scratch export then)."""
    previous = _exit_on_sigterm()
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _exit_on_sigterm():
    """SIGTERM raises SystemExit, so `finally` blocks run (the default action ends the process at
    once). uvicorn takes SIGTERM over while it serves, and after its graceful shutdown restores this
    handler and raises the signal again: that lands here too. Returns the handler it replaced."""
    if threading.current_thread() is not threading.main_thread():
        return None  # only the main thread may set handlers (an embedding caller's concern, then)

    def handler(signum, frame):
        raise SystemExit(128 + signum)
    return signal.signal(signal.SIGTERM, handler)


def _alive(pid: int) -> bool:
    if os.name == "nt":
        return True  # os.kill(pid, 0) would send Ctrl-C there; leftovers stay (never a wrong delete)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, under another user
    return True
