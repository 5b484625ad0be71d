"""distill: knowledge distillation for recommendation and classification on PyTorch.

    >>> import distill
    >>> cfg = distill.load_config("config.yaml")           # doctest: +SKIP
    >>> run = distill.train(cfg)                            # teacher, student and baseline
    >>> run.metrics["student"]["test"], run.metrics["baseline"]["test"]
    >>> distill.load_run("runs/example").predict("new.parquet")
"""
import os
import sys
import types

__version__ = "0.1.0"

# `python -m distill` (and torchrun's workers) put the working directory first on sys.path, so a
# stray `yaml.py` or `evilpkg.py` beside the user would be imported by us or by a `module:` model.
# While a `-m` module is being located sys.argv[0] is "-m"; drop that entry before importing
# anything else. An entry the user put there (PYTHONPATH=.) comes later and stays.
if sys.argv[:1] == ["-m"] and not sys.flags.safe_path and sys.path and sys.path[0] in ("", os.getcwd()):
    del sys.path[0]

from distill.config import Config, config_from_dict, load_config  # noqa: E402
from distill.errors import DistillError  # noqa: E402


class _Package(types.ModuleType):
    """`distill.compare` is the function (README, "From Python"), but importing the submodule
    distill.compare (the CLI, a benchmark or the first `distill.compare` itself does) makes the import
    system bind the package's attribute `compare` to that module, so the next `distill.compare(cfg)`
    would call a module. The function is kept there instead; the module stays sys.modules["distill.compare"]."""

    def __setattr__(self, name: str, value: object) -> None:
        if name == "compare" and isinstance(value, types.ModuleType):
            value = value.compare
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def __getattr__(name: str):
    # The heavy parts (torch, models) load on first use, so `import distill` stays light.
    if name in ("train", "load_run", "Run"):
        from distill import run
        return getattr(run, name)
    if name == "compare":
        from distill.compare import compare
        return compare
    raise AttributeError(f"module 'distill' has no attribute '{name}'")


__all__ = ["Config", "DistillError", "Run", "compare", "config_from_dict", "load_config", "load_run", "train"]


def __dir__() -> list[str]:
    # the lazy names above are not in the module's dict until first use; list them anyway
    return sorted(set(globals()) | set(__all__))
