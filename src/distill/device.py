"""Where tensors live and how the forward pass's precision is entered: the one seam a GPU changes.

Everything that places a tensor or opens an autocast region asks this module, so nothing else needs
to know which machine it runs on:

    >>> device = resolve("auto")                           # cuda:0 when a GPU is there, else cpu
    >>> precision = resolve_precision("auto", device)      # "bf16" where it is native, else "fp32"
    >>> with autocast(precision, device):                  # doctest: +SKIP
    ...     logits = model(batch.to(device))

`train.device`: auto | cpu | cuda | cuda:N. Under torchrun (LOCAL_RANK set) "auto" and "cuda" take
cuda:$LOCAL_RANK, one GPU per process. `train.precision`: auto | fp32 | bf16 | fp16; fp16 exists on
CUDA only (with a gradient scaler, `grad_scaler`); bf16 is native on CUDA GPUs that support it and
on CPUs with AVX512-BF16 or AMX. On an AVX2-only CPU bf16 autocast ran sync PFD 12x slower than
float32 (issue 15), so `auto` picks float32 there and an explicit `bf16` gets a warning.
"""
from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass

import torch

from distill.errors import DistillError

CPU = torch.device("cpu")
PRECISIONS = ("fp32", "bf16", "fp16")
DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")


def resolve(name: str | None = None) -> torch.device:
    """The device the models train on, from train.device (None means "cpu": the library's callers
    that never asked for a device keep training where they always did)."""
    if name in (None, "cpu"):
        return CPU
    if not isinstance(name, str) or not DEVICE_PATTERN.match(name):
        raise DistillError(f"train.device: '{name}' is not one of auto, cpu, cuda, cuda:N")
    available = torch.cuda.is_available()
    count = torch.cuda.device_count() if available else 0
    local = os.environ.get("LOCAL_RANK")
    if name == "auto" and not available:
        return CPU
    if not available:
        raise DistillError(f"train.device: '{name}' asked for a GPU but torch sees no CUDA device "
                           f"(torch {torch.__version__}; use train.device: cpu or auto)")
    if name in ("auto", "cuda"):
        index = int(local) if local is not None else 0  # torchrun: one GPU per local process
    else:
        index = int(name.split(":")[1])
    if index >= count:
        why = f"LOCAL_RANK={local}" if local is not None and name in ("auto", "cuda") else f"'{name}'"
        raise DistillError(f"train.device: {why} names GPU {index} but this machine has {count} "
                           f"(cuda:0..cuda:{count - 1})")
    return torch.device("cuda", index)


def describe(device: torch.device) -> dict[str, str]:
    """What run.json records about the device: its name, and the GPU's or the CPU's capability."""
    if device.type == "cuda":
        return {"device": str(device), "gpu": torch.cuda.get_device_name(device)}
    return {"device": str(device), "cpu_capability": cpu_capability()}


def cpu_capability() -> str:
    """torch's CPU kernel level (DEFAULT, AVX2, AVX512, ...), plus the bf16 instructions /proc/cpuinfo
    lists, since torch reports plain AVX512 even on CPUs with AVX512-BF16 and AMX."""
    found = torch.backends.cpu.get_cpu_capability()
    flags = _cpu_flags()
    extra = [f for f in ("avx512_bf16", "amx_bf16") if f in flags]
    return found + (f" ({', '.join(extra)})" if extra else "")


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def native_bf16(device: torch.device) -> bool:
    """Whether `device` multiplies bfloat16 natively (where bf16 autocast can be faster than fp32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    cap = torch.backends.cpu.get_cpu_capability()
    return "AMX" in cap or "BF16" in cap or bool({"avx512_bf16", "amx_bf16"} & _cpu_flags())


def resolve_precision(precision: str, device: torch.device) -> tuple[str, list[str]]:
    """train.precision on `device`: the precision to train in, and warnings for the log."""
    if precision == "auto":
        return ("bf16" if native_bf16(device) else "fp32"), []
    if precision == "fp16" and device.type != "cuda":
        raise DistillError(f"train.precision: fp16 needs a CUDA device (training on {device}); use bf16 or fp32")
    if precision == "bf16" and not native_bf16(device):
        return precision, [f"train.precision: bf16 on a CPU without native bf16 (capability {cpu_capability()}) "
                           "emulates it and can run many times slower than fp32; use auto or fp32"]
    if precision not in PRECISIONS:
        raise DistillError(f"train.precision: '{precision}' is not one of auto, {', '.join(PRECISIONS)}")
    return precision, []


def autocast(precision: str, device: torch.device = CPU) -> contextlib.AbstractContextManager:
    """The forward passes' precision: float32, or bfloat16 / float16 matrix products under
    torch.autocast. Callers take `.float()` of the logits, so losses stay float32."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    if precision == "fp16":
        return torch.autocast(device_type=device.type, dtype=torch.float16)
    if precision == "fp32":
        return contextlib.nullcontext()
    raise DistillError(f"train.precision: '{precision}' is not one of {', '.join(PRECISIONS)}")


def grad_scaler(precision: str, device: torch.device) -> "torch.amp.GradScaler | None":
    """fp16 gradients underflow without loss scaling: a GradScaler for fp16, None otherwise."""
    return torch.amp.GradScaler(device.type) if precision == "fp16" else None


def set_tf32(enabled: bool) -> None:
    """train.tf32: float32 matrix products in TensorFloat-32 on Ampere and later GPUs (opt-in: it
    rounds the mantissa to 10 bits)."""
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled


def backend(device: torch.device) -> str:
    """The torch.distributed backend for `device`: NCCL between GPUs, gloo on CPUs."""
    return "nccl" if device.type == "cuda" else "gloo"


def rng_state() -> dict[str, object]:
    """The CPU RNG and, where there is one, every CUDA device's: what a resumed run restores."""
    state: dict[str, object] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state) -> None:
    """Restore `rng_state()` (or a bare CPU state from a checkpoint of an older version). A CUDA
    state restores only on a machine with as many GPUs; elsewhere (a GPU run resumed on a CPU) the
    CPU stream is what the loop draws from."""
    if isinstance(state, torch.Tensor):
        torch.set_rng_state(state)
        return
    torch.set_rng_state(state["cpu"])
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and torch.cuda.device_count() == len(cuda):
        torch.cuda.set_rng_state_all(cuda)


@dataclass(frozen=True)
class Placement:
    """Where the training split's rows live while a model trains on `device` (train.data_on_device):

    - "device": copied to the GPU once; each batch is an index_select there (no copy per step)
    - "pinned": kept in host memory; each batch is gathered into a pinned staging buffer and copied
      with non_blocking=True one batch ahead (data/loader.py, `Staging`)
    - "cpu": training on the CPU: the rows are where the model is, batches are today's slices
    """

    where: str
    device: torch.device
    split_bytes: int
    free_bytes: int | None = None  # the GPU's free memory when decided (None on a CPU)
    share: float = 0.5  # train.device_memory_share
    setting: str = "auto"  # train.data_on_device

    def record(self) -> dict[str, object]:
        """What run.json keeps: the decision and the numbers it was made from."""
        return {"data": self.where, "data_split_bytes": self.split_bytes, "data_free_bytes": self.free_bytes,
                "data_memory_share": self.share, "data_on_device": self.setting}

    def describe(self) -> str:
        if self.where == "cpu":
            return f"training data: in host memory, on the CPU with the model ({_mib(self.split_bytes)})"
        limit = f"{self.share:g} of {_mib(self.free_bytes or 0)} free on {self.device}"
        if self.where == "device":
            return f"training data: copied to {self.device} once ({_mib(self.split_bytes)}; {limit}; data_on_device {self.setting})"
        return (f"training data: gathered on the host into pinned buffers, copied one batch ahead "
                f"({_mib(self.split_bytes)}; {limit}; data_on_device {self.setting})")


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """`t` on `device` without making the host wait for the GPU: a host tensor goes to a GPU through
    pinned memory with non_blocking=True (a copy from pageable memory synchronises). For the small
    once-per-epoch copies (an epoch's row numbers); the allocator keeps the pinned block until the
    copy is done."""
    if device.type != "cuda" or t.device == device:
        return t.to(device)
    return (t if t.is_pinned() else t.pin_memory()).to(device, non_blocking=True)


def _mib(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB"


def place_data(split_bytes: int, device: torch.device, setting: str = "auto", share: float = 0.5) -> Placement:
    """Decide where `split_bytes` of training rows live while training on `device`: on a GPU, on the
    device when `always`, or when `auto` and they take at most `share` of its free memory (the rest
    is left for the models, optimizer state and activations), else in pinned host memory (`never`,
    or too large). On a CPU: "cpu", whatever the setting."""
    if device.type != "cuda":
        return Placement("cpu", device, split_bytes, None, share, setting)
    free, _total = torch.cuda.mem_get_info(device)
    if setting == "never":
        where = "pinned"
    elif setting == "always":
        if split_bytes > free:
            raise DistillError(f"train.data_on_device: always, but the packed training split ({_mib(split_bytes)}) is "
                               f"larger than the free memory of {device} ({_mib(free)}); use auto or never")
        where = "device"
    elif setting == "auto":
        where = "device" if split_bytes <= share * free else "pinned"
    else:
        raise DistillError(f"train.data_on_device: '{setting}' is not one of auto, always, never")
    return Placement(where, device, split_bytes, int(free), share, setting)


def check(train) -> list[str]:
    """The train section's device choices (train.device, precision, sparse_embeddings under NCCL):
    raises DistillError with one line, returns warnings."""
    device = resolve(train.device)
    _, warnings = resolve_precision(train.precision, device)
    if train.sparse_embeddings and device.type == "cuda" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # DDP all-reduces each gradient; NCCL has no sparse all-reduce, so a sparse embedding
        # gradient cannot be averaged across GPUs (gloo can, which is why CPU runs allow it)
        raise DistillError("train.sparse_embeddings: NCCL (several GPU processes) cannot all-reduce sparse "
                           "gradients; turn it off, or train on CPUs (train.device: cpu, gloo)")
    if train.tf32 and device.type != "cuda":
        warnings.append(f"train.tf32 is ignored on {device} (TensorFloat-32 is a CUDA matmul mode)")
    if getattr(train, "data_on_device", "auto") != "auto" and device.type != "cuda":
        warnings.append(f"train.data_on_device: {train.data_on_device} is ignored on {device} "
                        "(the rows are already where the model trains)")
    return warnings
