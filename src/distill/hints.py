"""Hint distillation (Romero et al., FitNets; Rocket Launching for CTR): the student's hidden layer
pulled toward the teacher's through a learned projection, beside the logit term.

    loss = <the mode's loss> + w(step) · L_hint(P(h_s), sg(h_t))      L_hint: MSE, or 1 − cos

h is the input of a model's last layer ("the last hidden layer"; each built-in model names that
layer in its `hint_layer` attribute), or the output of the module named by distillation.hint.layer
(student) / distillation.hint.teacher_layer (teacher); a `module:` model opts in either way. It is
read with a forward hook, so no model's forward changes. P = nn.Linear(dim h_s, dim h_t) is made
here, optimised with the student, and lives nowhere else: not in the student's module, its
safetensors, a checkpoint's student entry or the export (tests/test_hints.py proves it).

    >>> h = hint_loss(torch.ones(2, 3), torch.ones(2, 3), "cosine")     # same direction: 0
    >>> float(h)
    0.0
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from distill import schedules
from distill.data.batch import Batch
from distill.errors import DistillError


def hint_loss(projected: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    """(B, H_t) each: mean squared error, or the mean of 1 − cosine similarity per row."""
    target = target.detach()  # stop-gradient: the hint trains the student (and P) only
    if kind == "mse":
        return (projected - target).pow(2).mean()
    return (1.0 - F.cosine_similarity(projected, target, dim=-1)).mean()


class Capture:
    """Holds what a model's hint layer computed in its last forward (a forward hook)."""

    def __init__(self, model: nn.Module, layer: str | None, key: str):
        modules = dict(model.named_modules())
        use_input = layer is None
        name = layer if layer is not None else getattr(model, "hint_layer", None)
        if name is None:
            raise DistillError(f"{key}: the model exposes no hidden layer (name one: a module of the model, "
                               "or give the model a 'hint_layer' attribute)")
        if name not in modules:
            raise DistillError(f"{key}: '{name}' is not a module of the model (modules: {', '.join(n for n in modules if n)[:200]})")
        self.value: torch.Tensor | None = None
        self.handle = modules[name].register_forward_hook(
            lambda m, inputs, output: setattr(self, "value", (inputs[0] if use_input else output).flatten(1)))

    def remove(self) -> None:
        self.handle.remove()
        self.value = None


@dataclass
class Hint:
    """The hint term of one training phase: where h_s comes from, h_t for a batch, P, the weight."""

    student: Capture
    teacher_hidden: Callable[[Batch], torch.Tensor]  # (B, H_t) for the batch's rows
    projection: nn.Linear
    weight: Callable[[int], float]
    kind: str
    step_no: int = 0  # set by `track`, read by `wrap`: the loop's optimizer step (for the schedule)
    teacher_capture: Capture | None = None  # sync: h_t read live from the teacher's forward

    def track(self, lam: Callable[[int], float]) -> Callable[[int], float]:
        """The loop calls λ(step) just before each step; this records that step for the hint's schedule
        (so a resumed run continues the schedule where it was)."""
        def tracked(step: int) -> float:
            self.step_no = step
            return lam(step)
        return tracked

    def wrap(self, step):
        def hinted(batch: Batch, lam: float) -> dict[str, torch.Tensor]:
            out = step(batch, lam)  # the mode's step ran the student: its hint layer is captured
            h_s = self.student.value.float()  # (B, H_s)
            l_hint = hint_loss(self.projection(h_s), self.teacher_hidden(batch).float(), self.kind)
            out["L_hint"] = l_hint
            out["loss"] = out["loss"] + self.weight(self.step_no) * l_hint
            return out
        return hinted

    def close(self) -> None:
        self.student.remove()
        if self.teacher_capture is not None:
            self.teacher_capture.remove()


def make(cfg, student: nn.Module, teacher_dim: int, student_batch: Batch,
         teacher_hidden: Callable[[Batch], torch.Tensor]) -> Hint:
    """The hint of a run of `cfg` (distillation.hint): hooks the student, sizes P from one batch."""
    h = cfg.distillation.hint
    capture = Capture(student, h.layer, "distillation.hint.layer")
    s_dim = _width(student, capture, student_batch)
    with torch.random.fork_rng(devices=[]):  # P's init must not move the student's RNG stream
        torch.manual_seed(cfg.train.seed + 7)
        projection = nn.Linear(s_dim, teacher_dim)
    weight = lambda step: schedules.lam(h.schedule.type, step, h.weight, h.schedule.steps)
    return Hint(capture, teacher_hidden, projection, weight, h.loss)


def teacher_dim(teacher: nn.Module, layer: str | None, batch: Batch) -> int:
    capture = Capture(teacher, layer, "distillation.hint.teacher_layer")
    dim = _width(teacher, capture, batch)
    capture.remove()
    return dim


def _width(model: nn.Module, capture: Capture, batch: Batch) -> int:
    """The width of the layer `capture` hooks: one forward pass on `batch` in eval mode, without
    gradients, the model's train/eval state left as it was."""
    was = model.training
    model.eval()
    with torch.no_grad():
        model(batch)
    model.train(was)
    return capture.value.shape[1]


def cache_hidden(teacher: nn.Module, layer: str | None, loader, features: list[str]) -> torch.Tensor:
    """The frozen teacher's hidden layer on every training row (N, H_t), by row number (async)."""
    capture = Capture(teacher, layer, "distillation.hint.teacher_layer")
    teacher.eval()
    out: torch.Tensor | None = None
    from distill.data.loader import cache_home
    from distill.inference import model_device
    where = model_device(teacher)
    with torch.no_grad():
        for b in loader.narrowed(features).ordered():
            b = b.to(where)  # a GPU teacher reads the batch there (itself on a CPU)
            teacher(b.select(features))
            h = capture.value.float()
            if out is None:  # on the GPU when it fits (train.device_memory_share), else in host memory
                out = torch.zeros((loader.num_rows, h.shape[1]), device=cache_home(loader, where, loader.num_rows * h.shape[1] * 4))
            out[b.index.to(out.device)] = h.to(out.device)
    capture.remove()
    assert out is not None
    from distill import distributed
    return distributed.sum_parts(out)  # under torchrun each rank computed its slices
