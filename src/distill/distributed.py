"""Data-parallel training across processes and machines, on torch.distributed.

Launched the standard way, `torchrun --nproc_per_node=N -m distill train CONFIG`; torchrun sets
RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT and `setup()` reads them once. Without them (plain
`distill train`) every helper here is a no-op for a world of one, so the loops read the same
either way. The design (the README section "Training on several processes" has the long form):

- every rank reads the splits and fits the encoders identically (checked by `agree`);
  `ShardedLoader` gives rank r the r-th slice of each *global* batch the loader draws (in memory
  or streamed), so `train.batch_size` is the global batch and the learning rate needs no scaling
  when the number of processes changes;
- the model being trained is wrapped in DistributedDataParallel (`wrap`): gradients are averaged
  across ranks in backward; a frozen teacher is never wrapped, and its soft labels are computed
  per rank for its slices and summed (`sum_parts`);
- validation predictions are gathered from all ranks (`gather_rows`) and metrics computed over
  the whole split on every rank, so early-stopping decisions agree without a broadcast;
- only rank 0 writes (run directory, logs, checkpoints); `on_main` runs a step there and hands
  its result, or its DistillError, to every rank so no rank waits for a peer that gave up;
- the process group has a timeout (DISTILL_DIST_TIMEOUT seconds, default 600), so a rank that
  died on another machine fails the collective instead of hanging forever; on one machine
  torchrun already tears the others down as soon as a worker exits with an error.
"""
from __future__ import annotations

import atexit
import dataclasses
import datetime
import hashlib
import os
import re
from typing import Any, Callable, Iterator, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from distill.data.batch import Batch, Encoded
from distill.data.loader import GroupedLoader, InMemoryLoader
from distill.data.stream import StreamingLoader
from distill.errors import DistillError

T = TypeVar("T")
DEFAULT_TIMEOUT_S = 600


def setup(backend: str = "gloo") -> bool:
    """Join the process group torchrun described in the environment; True when distributed.
    `backend`: "nccl" when the models train on GPUs, "gloo" on CPUs (distill.device.backend);
    DISTILL_DIST_BACKEND overrides it.

    Idempotent: `train` may run more than once in a process.
    """
    if dist.is_available() and dist.is_initialized():
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    raw = os.environ.get("DISTILL_DIST_TIMEOUT", str(DEFAULT_TIMEOUT_S))
    try:
        timeout = float(raw)
    except ValueError:
        timeout = -1.0
    if not timeout > 0:
        raise DistillError(f"DISTILL_DIST_TIMEOUT='{raw}': give the collective timeout in seconds (> 0)")
    backend = os.environ.get("DISTILL_DIST_BACKEND", backend)
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout))
    atexit.register(_teardown)
    return True


def _teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if active():
        dist.barrier()


def wrap(module: nn.Module) -> nn.Module:
    """`module` under DistributedDataParallel when distributed, else `module` itself.

    DDP broadcasts rank 0's weights at construction and averages gradients in backward. Call the
    returned object for the training forward pass; keep the plain module for evaluation,
    checkpoints and KeepBest (they are the same parameters). DDP's default
    find_unused_parameters=False relies on every parameter getting a gradient each step: true of
    every registered model (tests/test_models.py::test_no_parameter_is_left_unused); a custom `module:` model whose
    forward skips a parameter fails with DDP's own error naming the parameter, never a hang.
    """
    if not active():
        return module
    return nn.parallel.DistributedDataParallel(module)


def gather_rows(local: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's rows in rank order: (n_r, ...) on rank r → (Σ n_r, ...) everywhere."""
    if not active():
        return local
    # on the tensor's device: NCCL gathers GPU tensors only
    counts = [torch.zeros(1, dtype=torch.long, device=local.device) for _ in range(world())]
    dist.all_gather(counts, torch.tensor([len(local)], device=local.device))
    longest = max(int(c) for c in counts)
    padded = torch.zeros((longest, *local.shape[1:]), dtype=local.dtype, device=local.device)  # all_gather needs equal shapes
    padded[: len(local)] = local
    parts = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(parts, padded)
    return torch.cat([p[: int(c)] for p, c in zip(parts, counts)])


def predict_all(predict: Callable[[Encoded], torch.Tensor], data: Encoded) -> torch.Tensor:
    """`predict(data)` for every row of `data`, each rank predicting its own slice: (N, ...) everywhere.

    Metrics are then computed over the whole split on every rank, never averaged per rank (an
    average of per-rank AUCs is not the AUC).
    """
    if not active():
        return predict(data)
    lo, hi = shard_range(len(data))
    first = min(lo, len(data) - 1)  # with more ranks than rows, predict one row and keep none of it,
    part = predict(_rows(data, first, max(hi, first + 1)))[lo - first: hi - first]  # so shapes still agree
    return gather_rows(part)


def _rows(data: Encoded, lo: int, hi: int) -> Encoded:
    return Encoded({n: t[lo:hi] for n, t in data.features.items()})


def shard_range(n: int, r: int | None = None, w: int | None = None) -> tuple[int, int]:
    """Rows [lo, hi) of n that rank r takes: contiguous, sizes differ by at most one."""
    r, w = rank() if r is None else r, world() if w is None else w
    return r * n // w, (r + 1) * n // w


def on_main(fn: Callable[[], T]) -> T:
    """Run `fn` on rank 0 only (a step that writes files) and give every rank its result.

    A DistillError there is raised on every rank with the same message, so the others stop
    cleanly instead of waiting at the next collective until the timeout.
    """
    if not active():
        return fn()
    box: list[Any] = [None]
    if is_main():
        try:
            box[0] = ("ok", fn())
        except DistillError as e:
            box[0] = ("error", str(e))
        except BaseException as e:  # let the others stop too, then fail here with the traceback
            box[0] = ("error", f"rank 0 failed: {type(e).__name__}: {e}")
            dist.broadcast_object_list(box, src=0)
            raise
    dist.broadcast_object_list(box, src=0)
    kind, value = box[0]
    if kind == "error":
        raise DistillError(value)
    return value


def agree(what: str, value: Any) -> None:
    """Fail on every rank when `value` (e.g. fitted encoders) differs between ranks."""
    if not active():
        return
    digest = hashlib.sha256(repr(value).encode()).hexdigest()
    digests: list[Any] = [None] * world()
    dist.all_gather_object(digests, digest)
    odd = [r for r, d in enumerate(digests) if d != digests[0]]
    if odd:
        raise DistillError(f"rank {odd[0]} has different {what} than rank 0: every node must read the same data files "
                           "(same paths, same contents)")


def peer_failure(error: BaseException) -> DistillError | None:
    """A collective that failed because another rank died or timed out, as a one-line error."""
    if not active() or isinstance(error, DistillError):
        return None
    text = str(error)
    if not (isinstance(error, dist.DistError) or "/gloo/" in text or "NCCL" in text):
        return None
    detail = re.sub(r"^\[[^\]]*\]\s*", "", text.splitlines()[0]).split(". ")[0]  # drop gloo's source location
    if "timed out" in text.lower():
        return DistillError(f"timed out waiting for another rank in a collective operation ({detail}; "
                            "DISTILL_DIST_TIMEOUT): a rank is stuck, or died on another machine")
    return DistillError(f"lost contact with another rank in a collective operation ({detail}); torchrun's "
                        "'Root Cause' names the rank that failed first")


def seed_rank(seed: int) -> None:
    """Give each rank its own dropout stream after the models were built identically."""
    if rank() > 0:
        torch.manual_seed(seed * 1_000_003 + 7919 * rank())


# ----------------------------------------------------------------------------- data


class ShardedLoader:
    """The batches of another loader (in memory or streamed), split across ranks.

    Every rank draws the same global batches from `inner` (its order depends on seed and epoch
    only) and keeps the r-th contiguous slice of each. So the number of steps per epoch, the
    schedules, `eval_every` and checkpoint positions do not depend on the number of processes,
    each row is seen once per epoch by exactly one rank, and a checkpoint (epoch, global batch)
    resumes under any number of processes. (Each rank encodes whole global batches and keeps a
    slice: cheap in memory; a streamed split is read by every rank.)

    When the epoch's last global batch has fewer rows than there are ranks, a rank left without
    rows gets one row with weight 0: it still takes part in the gradient reduction (DDP needs
    every rank at every step) but adds nothing to the loss.
    """

    def __init__(self, inner: InMemoryLoader | StreamingLoader, rank_: int | None = None, world_: int | None = None):
        self.inner = inner
        self.batch_size, self.num_rows = inner.batch_size, inner.num_rows
        self.rank = rank() if rank_ is None else rank_
        self.world = world() if world_ is None else world_
        if self.num_rows < self.world:
            raise DistillError(f"the training split has {self.num_rows} rows, fewer than the {self.world} processes")
        self._drawn = [0]  # a list: narrowed() copies share the count
        # Test hook for the failure test (tests/test_distributed.py): DISTILL_TEST_EXIT="r:k" makes
        # rank r exit abruptly when it draws its k-th batch, as a crashed or killed worker would.
        spec = os.environ.get("DISTILL_TEST_EXIT", "")
        self._exit_at = int(spec.split(":")[1]) if spec and int(spec.split(":")[0]) == self.rank else None

    def __len__(self) -> int:
        return len(self.inner)

    def narrowed(self, names: list[str]) -> "ShardedLoader":
        other = ShardedLoader(self.inner.narrowed(names), self.rank, self.world)
        other._drawn, other._exit_at = self._drawn, self._exit_at
        return other

    def with_soft(self, soft) -> "ShardedLoader":
        """The inner loader's batches with cached soft labels gathered alongside (data/loader.py)."""
        other = ShardedLoader(self.inner.with_soft(soft), self.rank, self.world)
        other._drawn, other._exit_at = self._drawn, self._exit_at
        return other

    def epoch(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        for batch in self.inner.epoch(epoch, start):
            self._drawn[0] += 1
            if self._exit_at is not None and self._drawn[0] >= self._exit_at:
                os._exit(3)
            lo, hi = shard_range(len(batch), self.rank, self.world)
            yield _rows_of(batch, lo, hi) if hi > lo else _weightless(_rows_of(batch, 0, 1))

    def ordered(self, batch_size: int = 8192) -> Iterator[Batch]:
        """This rank's slice of every row, in file order (teacher inference: see `sum_parts`)."""
        for batch in self.inner.ordered(batch_size):
            lo, hi = shard_range(len(batch), self.rank, self.world)
            if hi > lo:
                yield _rows_of(batch, lo, hi)


def _rows_of(batch: Batch, lo: int, hi: int) -> Batch:
    """Rows [lo, hi) of every per-row field (features, y, weight, index, soft, ...)."""
    parts: dict[str, Any] = {}
    for f in dataclasses.fields(batch):
        v = getattr(batch, f.name)
        parts[f.name] = {n: t[lo:hi] for n, t in v.items()} if isinstance(v, dict) else None if v is None else v[lo:hi]
    return Batch(**parts)


def _weightless(batch: Batch) -> Batch:
    return dataclasses.replace(batch, weight=torch.zeros(len(batch), device=batch.y.device if batch.y is not None else None))


def sum_parts(local: torch.Tensor) -> torch.Tensor:
    """Every rank filled its own rows of `local` and left the others 0: after the sum, all rows
    are filled on every rank."""
    if active():
        dist.all_reduce(local, op=dist.ReduceOp.SUM)
    return local


def shard(loader: InMemoryLoader | StreamingLoader) -> InMemoryLoader | StreamingLoader | ShardedLoader:
    """`loader` itself for a world of one, else a `ShardedLoader` over it (a GroupedLoader shards
    itself, by whole groups)."""
    if active() and isinstance(loader, GroupedLoader):
        return loader.for_rank(rank(), world())
    return ShardedLoader(loader) if active() else loader
