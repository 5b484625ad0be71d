"""Model factories used by the tests through `model: "module:spy_models:..."` (the user-factory path)."""
from torch import nn

from distill.models import MODELS

SEEN: list[tuple[str, frozenset, bool]] = []  # (tag, feature names in the batch, training?)


class Spy(nn.Module):
    """Wraps a built-in model and records which features each batch carried."""

    def __init__(self, inner: nn.Module, tag: str):
        super().__init__()
        self.inner = inner
        self.embedding = inner.embedding  # so embedding sharing still finds the tables
        self.tag = tag

    def forward(self, batch):
        SEEN.append((self.tag, frozenset(batch.features), self.training))
        return self.inner(batch)


def spy(spec):
    return Spy(MODELS[spec.options.get("inner", "dnn")](spec), spec.options.get("tag", "model"))


class Greedy(nn.Module):
    """A model that reads a feature it was not given: it must fail loudly."""

    def __init__(self, spec):
        super().__init__()
        self.lin = nn.Linear(2, 1)

    def forward(self, batch):
        return self.lin(batch["intent"]).squeeze(-1)


def greedy(spec):
    return Greedy(spec)


def not_a_module(spec):
    return "nope"


class Explode(nn.Module):
    """Trains normally for a few steps, then returns NaN: divergence must stop the run cleanly."""

    def __init__(self, spec):
        super().__init__()
        self.inner = MODELS["dnn"](spec)
        self.embedding = self.inner.embedding
        self.calls = 0

    def forward(self, batch):
        out = self.inner(batch)
        if self.training:
            self.calls += 1
            if self.calls > spec_limit(self):
                return out * float("nan")
        return out


def spec_limit(model) -> int:
    return 7


def explode(spec):
    return Explode(spec)
