"""A run end to end: read data, build teacher and student, train in the configured mode, train the
no-distillation baseline, evaluate, and write the run directory. Also `load_run` to use it later.

Run directory (written under `<output>.partial` and renamed when complete, so it appears whole):
    config.yaml          the resolved config (also inside every checkpoint's metadata)
    schema.json          features (serving / privileged), task, label classes
    encoders.json        fitted vocabularies and statistics: serving needs no training data
    teacher.safetensors  student.safetensors  baseline.safetensors
    metrics.json         {"teacher": {split: {...}}, "student": {...}, "baseline": {...}}
    steps.jsonl          one line per step: phase, step, epoch, λ, lr, L_s, L_d, L_t, loss
    events.out.tfevents.* the same curves and the validation metrics for TensorBoard
    evals.jsonl          validation metrics at each evaluation
    run.json             timings, shared tables, filled values, warnings, versions, world size

Under `torchrun --nproc_per_node=N -m distill train CONFIG` the same function runs on every rank;
only rank 0 writes the run directory (README, "Training on several processes"; `distill.distributed`).
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from safetensors.torch import load_model, save_model
from torch import nn

from distill import distributed, schema
from distill.config import Config, config_from_dict, dump_config
from distill.data.dataset import Encoders, Splits, load_splits
from distill.data.io import read_table
from distill.errors import DistillError
from distill.models import build_model
from distill.models.parts import FeatureInfo, share_tables
from distill.data.loader import InMemoryLoader
from distill.data.stream import StreamingLoader
from distill.training.asynchronous import train_async_student
from distill.training.checkpoint import Checkpoints, atomic_write, require_good
from distill.training.common import RunLog, evaluate, predict_logits, to_output
from distill.training.single import train_single
from distill.training.sync import train_sync

ROLES = ("teacher", "student", "baseline")


def feature_infos(encoders: Encoders, names: list[str]) -> tuple[FeatureInfo, ...]:
    return tuple(FeatureInfo(n, encoders.features[n].kind, encoders.features[n].cardinality) for n in names)


def build(cfg: Config, encoders: Encoders, role: str, seed: int) -> tuple[nn.Module, list[str]]:
    """Build the teacher or the student (the baseline is a student) with its own seeded init."""
    section = "teacher" if role == "teacher" else "student"
    names = [f.name for f in schema.model_features(cfg, section)]
    torch.manual_seed(seed + (0 if role == "teacher" else 1))  # baseline and student start identical
    try:
        model = build_model(getattr(cfg, section), feature_infos(encoders, names), encoders.label.out_dim,
                            sparse=cfg.train.sparse_embeddings)
    except (ValueError, TypeError) as e:
        raise DistillError(f"{section}.model '{getattr(cfg, section).model}': {e}") from None
    return model, names


def prepare_output(output: Path, overwrite: bool) -> Path:
    if output.exists() and any(output.iterdir()) and not overwrite:
        raise DistillError(f"{output}: the output directory exists; choose another `output` or pass --overwrite")
    partial = output.with_name(output.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    return partial


def publish(partial: Path, output: Path) -> None:
    if output.exists():
        shutil.rmtree(output)
    os.replace(partial, output)


def save_checkpoint(model: nn.Module, path: Path, cfg: Config, role: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    save_model(model, str(tmp), metadata={"role": role, "config": json.dumps(cfg.model_dump(mode="json"))})
    os.replace(tmp, path)


def versions() -> dict[str, str]:
    import distill
    return {"distill": distill.__version__, "torch": torch.__version__, "pyarrow": pa.__version__,
            "numpy": np.__version__, "python": platform.python_version()}


def train(cfg: Config, output: str | Path | None = None, overwrite: bool = False, quiet: bool = False,
          splits: Splits | None = None, resume: bool = False) -> "Run":
    """Train teacher, student and (unless `train.baseline` is false) the baseline; write the run.

    With `resume`, continue an interrupted run from the newest good checkpoint in
    `<output>.partial/checkpoints` (written every `train.checkpoint_every` steps).

    >>> run = train(load_config("config.yaml"))        # doctest: +SKIP
    >>> run.metrics["student"]["test"]["auc"]
    """
    warnings = schema.check(cfg)
    output = Path(output or cfg.output)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    torch.use_deterministic_algorithms(cfg.train.deterministic)
    mode, seed = cfg.distillation.mode, cfg.train.seed
    teacher_run = _teacher_run(cfg) if cfg.distillation.teacher_checkpoint else None
    # Under torchrun only rank 0 touches the run directory (README, "Training on several processes"); a world of one
    # runs exactly the lines it always did.
    distributed.setup()
    main = distributed.is_main()

    def start() -> Path:
        partial = resume_output(output, cfg) if resume else prepare_output(output, overwrite)
        (partial / "config.yaml").write_text(dump_config(cfg))
        return partial

    partial = distributed.on_main(start)
    log = RunLog(partial if main else None, quiet or not main)
    try:
        for w in warnings:
            log.info(f"warning: {w}")
        t0 = time.perf_counter()
        if splits is None:
            splits = load_splits(cfg, encoders=teacher_run.encoders if teacher_run else None)
        loader = make_loader(cfg, splits)
        distributed.agree("encoders and training rows", (splits.encoders.to_dict(), loader.num_rows))
        info: dict[str, Any] = {"mode": mode, "seed": seed, "warnings": warnings, "versions": versions(),
                                "world_size": distributed.world(),
                                "rows": {"train": loader.num_rows}, "load_seconds": time.perf_counter() - t0,
                                "filled_values": splits.train_missing or {}}
        for n, c in (splits.train_missing or {}).items():
            log.info(f"'{n}': {c} missing or non-finite value(s) in the training split, filled and flagged")
        label = splits.encoders.label
        models, features = _build_all(cfg, splits.encoders, teacher_run)
        distributed.seed_rank(seed)
        if "teacher" in models:
            log.info(f"teacher: {cfg.teacher.model} on {len(features['teacher'])} features "
                     f"({_params(models['teacher']):,} parameters); student: {cfg.student.model} on "
                     f"{len(features['student'])} serving features ({_params(models['student']):,} parameters)")
        if mode == "sync" and cfg.distillation.share_embeddings:
            common = [n for n in features["student"] if n in features["teacher"] and n not in cfg.distillation.separate_embeddings]
            info["shared_tables"] = share_tables(models["teacher"], models["student"], common)
            log.info(f"sharing embedding tables: {', '.join(info['shared_tables']) or 'none'}")

        ckpt = Checkpoints(partial / "checkpoints", cfg.train.checkpoint_every, models, write=main)
        if resume:
            _resume(ckpt, partial)
            for w in ckpt.warnings:
                log.info(f"warning: {w}")
        # under torchrun, rank r takes the r-th slice of each global batch of `batch_size` rows
        loader = distributed.shard(loader)
        valid = splits.valid

        def phase(name: str, fn, *args, **kwargs) -> None:
            """Run one training phase unless a checkpoint says it is already done."""
            if name not in ckpt.completed:
                t = time.perf_counter()
                summary = fn(*args, **kwargs, ckpt=ckpt)
                summary["wall_seconds"] = time.perf_counter() - t
                ckpt.finish(name, summary)

        if mode == "sync":
            both = list(dict.fromkeys(features["teacher"] + features["student"]))
            phase("sync", train_sync, cfg, models["teacher"], models["student"], features["teacher"],
                  features["student"], loader.narrowed(both), valid, label, log)
        elif mode == "async":
            if teacher_run is None:
                log.info("async: training the teacher")
                phase("teacher", train_single, cfg, models["teacher"], features["teacher"], loader.narrowed(features["teacher"]),
                      valid, label, log, "teacher")
            phase("student", train_async_student, cfg, models["teacher"], models["student"], features["teacher"],
                  features["student"], loader, valid, label, log)
        elif mode == "offline":
            phase("student", train_single, cfg, models["student"], features["student"], loader.narrowed(features["student"]),
                  valid, label, log, "student", soft=lambda batch: batch.soft)
        if "baseline" in models:
            log.info("training the baseline: the same student without distillation")
            phase("baseline", train_single, cfg, models["baseline"], features["baseline"], loader.narrowed(features["baseline"]),
                  valid, label, log, "baseline")
        info["phases"] = ckpt.completed
        info["train_seconds"] = sum(v["wall_seconds"] for k, v in ckpt.completed.items() if k != "baseline")
        if "baseline" in ckpt.completed:
            info["baseline_seconds"] = ckpt.completed["baseline"]["wall_seconds"]

        results = {role: _evaluate_all(models[role], features[role], splits, label) for role in ROLES if role in models}

        def finish() -> None:
            _write_run(partial, cfg, splits.encoders, models, results, info)
            log.close()
            shutil.rmtree(partial / "checkpoints", ignore_errors=True)  # the run is complete: weights are saved
            publish(partial, output)

        distributed.on_main(finish)
    except BaseException as error:
        log.close()
        e = distributed.peer_failure(error) or error  # a lost peer reads as one line, not a gloo traceback
        if main:  # rank 0 owns the run directory and decides what to keep
            if cfg.train.checkpoint_every and any((partial / "checkpoints").glob("ckpt-*.pt")):
                if isinstance(e, DistillError):  # keep what can be resumed, and say how
                    raise DistillError(f"{e}; checkpoints kept in {partial}, continue with --resume {output}") from None
            else:
                shutil.rmtree(partial, ignore_errors=True)
        if e is error:
            raise
        raise e from None
    if not main:  # the same models and metrics as rank 0's, without reading its directory
        for m in models.values():
            m.eval()
        return Run(output, cfg, splits.encoders, {}, results, models, features)
    return load_run(output)


def _resume(ckpt: Checkpoints, partial: Path) -> None:
    """Load the newest good checkpoint on every rank. Rank 0 reads it (only it needs the run
    directory) and sends it to the others; its positions are in global batches, so any number
    of processes can continue it."""
    def read() -> dict[str, Any] | None:
        require_good(ckpt, partial)
        trim_logs(partial, ckpt)
        if not distributed.active():
            return None
        return {"models": {r: m.state_dict() for r, m in ckpt.models.items()}, "completed": ckpt.completed,
                "resume": ckpt.resume}

    state = distributed.on_main(read)
    if state is not None and not distributed.is_main():
        for role, sd in state["models"].items():
            ckpt.models[role].load_state_dict(sd)
        ckpt.completed, ckpt.resume = state["completed"], state["resume"]


def make_loader(cfg: Config, splits: Splits) -> "InMemoryLoader | StreamingLoader":
    if cfg.data.streaming:
        soft = cfg.distillation.soft_label if cfg.distillation.mode == "offline" else None
        return StreamingLoader(cfg, splits.encoders, soft_label=soft)
    assert splits.train is not None
    return InMemoryLoader(splits.train, cfg.train.batch_size, cfg.train.seed)


def _build_all(cfg: Config, encoders: Encoders, teacher_run: "Run | None") -> tuple[dict[str, nn.Module], dict[str, list[str]]]:
    """Every model the mode needs, built up front (so a checkpoint holds them all)."""
    mode, seed = cfg.distillation.mode, cfg.train.seed
    models: dict[str, nn.Module] = {}
    features: dict[str, list[str]] = {}
    if mode in ("sync", "async"):
        if teacher_run is not None:
            models["teacher"], features["teacher"] = teacher_run.models["teacher"], teacher_run.features["teacher"]
        else:
            models["teacher"], features["teacher"] = build(cfg, encoders, "teacher", seed)
    if mode != "none":
        models["student"], features["student"] = build(cfg, encoders, "student", seed)
    if cfg.train.baseline or mode == "none":
        models["baseline"], features["baseline"] = build(cfg, encoders, "baseline", seed)
    return models, features


def resume_output(output: Path, cfg: Config) -> Path:
    """The `.partial` directory of an interrupted run, checked against the config."""
    partial = output if output.name.endswith(".partial") else output.with_name(output.name + ".partial")
    if not partial.is_dir():
        hint = " (it finished: nothing to resume)" if (output / "metrics.json").is_file() else ""
        raise DistillError(f"--resume {output}: no interrupted run there (no {partial.name}){hint}")
    saved = partial / "config.yaml"
    if saved.is_file():
        import yaml
        theirs = yaml.safe_load(saved.read_text())
        ours = cfg.model_dump(mode="json")
        diff = [k for k in ours if k != "output" and ours.get(k) != theirs.get(k)]
        if diff:
            raise DistillError(f"--resume {output}: the config differs from the interrupted run's in '{diff[0]}'")
    return partial


def trim_logs(partial: Path, ckpt: Checkpoints) -> None:
    """Drop log lines written after the checkpoint we resume from: those steps run again."""
    current = ckpt.resume
    for name in ("steps.jsonl", "evals.jsonl"):
        path = partial / name
        if not path.is_file():
            continue
        kept = []
        for line in path.read_text().splitlines():
            rec = json.loads(line)
            done = rec["phase"] in ckpt.completed
            redo_from = current["step"] + (0 if name == "steps.jsonl" else 1) if current and rec["phase"] == current["phase"] else None
            if done or (redo_from is not None and rec["step"] < redo_from):
                kept.append(line)
        atomic_write(path, ("\n".join(kept) + "\n" if kept else "").encode())


def _params(m: nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in m.parameters()}.values())


def _evaluate_all(model: nn.Module, features: list[str], splits: Splits, label) -> dict[str, dict[str, float]]:
    out = {}
    for split in ("valid", "test"):
        data = getattr(splits, split)
        if data is not None:
            out[split] = evaluate(model, data, features, label)
    if not out and splits.train is not None:
        out["train"] = evaluate(model, splits.train, features, label)
    return out


def _write_run(d: Path, cfg: Config, encoders: Encoders, models: dict[str, nn.Module],
               results: dict, info: dict) -> None:
    (d / "config.yaml").write_text(dump_config(cfg))
    (d / "schema.json").write_text(json.dumps({
        "task": cfg.task.model_dump(), "classes": encoders.label.classes,
        "serving": [f.model_dump() for f in schema.serving(cfg)],
        "privileged": [f.model_dump() for f in schema.privileged(cfg)],
    }, indent=2))
    encoders.save(d / "encoders.json")
    for role, model in models.items():
        save_checkpoint(model, d / f"{role}.safetensors", cfg, role)
    (d / "metrics.json").write_text(json.dumps(results, indent=2))
    (d / "run.json").write_text(json.dumps(info, indent=2, default=float))


def _teacher_run(cfg: Config) -> "Run":
    """The trained teacher named by distillation.teacher_checkpoint (a run directory)."""
    path = Path(cfg.distillation.teacher_checkpoint)
    if path.suffix == ".safetensors":
        path = path.parent
    if not (path / "teacher.safetensors").is_file():
        raise DistillError(f"distillation.teacher_checkpoint: {path} holds no teacher.safetensors (give a run directory)")
    run = load_run(path)
    theirs = {f["name"]: f["type"] for f in run.schema["serving"] + run.schema["privileged"]}
    for f in cfg.features:
        if theirs.get(f.name) != f.type:
            raise DistillError(f"distillation.teacher_checkpoint: {path} was trained on another schema "
                               f"(feature '{f.name}' is {theirs.get(f.name, 'absent')} there, {f.type} here)")
    if run.config.task.model_dump() != cfg.task.model_dump():
        raise DistillError(f"distillation.teacher_checkpoint: {path} was trained for another task "
                           f"({run.config.task.type} '{run.config.task.label}')")
    run.models["teacher"].requires_grad_(False)
    return run


# ----------------------------------------------------------------------------- loading a run


@dataclass
class Run:
    """A finished run: its config, encoders, models and metrics. `predict` serves the student."""

    path: Path
    config: Config
    encoders: Encoders
    schema: dict[str, Any]
    metrics: dict[str, Any]
    models: dict[str, nn.Module] = field(default_factory=dict)
    features: dict[str, list[str]] = field(default_factory=dict)

    @property
    def serving_features(self) -> list[str]:
        return self.features.get("student") or self.features["baseline"]

    def predict(self, data: str | Path | pa.Table, role: str = "student") -> np.ndarray:
        """Probabilities (binary), class probabilities (multiclass) or values (regression).

        The student reads serving features only; other columns of `data` are ignored.
        """
        table = data if isinstance(data, pa.Table) else read_table(str(data))
        where = "data" if isinstance(data, pa.Table) else str(data)
        names = self.features[role]
        enc = self.encoders.encode(self.config, table, where, features=names, label=False)
        return to_output(predict_logits(self.models[role], enc, names), self.encoders.label)

    def evaluate(self, data: str | Path | pa.Table | None = None) -> dict[str, dict[str, Any]]:
        """Metrics of each model on `data` (default: the run's valid and test splits).

        A model whose features are missing from the data (the teacher without privileged columns)
        is skipped, with the reason in its entry.
        """
        if data is None:
            specs = {s: getattr(self.config.data, s) for s in ("valid", "test") if getattr(self.config.data, s)}
            tables = {s: read_table(p, self.config.data.format) for s, p in specs.items()}
            wheres = specs
        else:
            tables = {"data": data if isinstance(data, pa.Table) else read_table(str(data))}
            wheres = {"data": "data" if isinstance(data, pa.Table) else str(data)}
        out: dict[str, dict[str, Any]] = {}
        for role, model in self.models.items():
            out[role] = {}
            for split, table in tables.items():
                missing = [n for n in self.features[role] if n not in table.column_names]
                if missing:
                    out[role][split] = {"skipped": f"missing column '{missing[0]}'"}
                    continue
                enc = self.encoders.encode(self.config, table, wheres[split], features=self.features[role])
                out[role][split] = evaluate(model, enc, self.features[role], self.encoders.label)
        return out


def load_run(path: str | Path) -> Run:
    """Load a run directory written by `train` (no training data needed)."""
    path = Path(path)
    if not (path / "config.yaml").is_file():
        raise DistillError(f"{path}: not a distill run directory (no config.yaml)")
    import yaml
    cfg = config_from_dict(yaml.safe_load((path / "config.yaml").read_text()), source=str(path / "config.yaml"))
    try:
        encoders = Encoders.load(path / "encoders.json")
        schema_d = json.loads((path / "schema.json").read_text())
        metrics_d = json.loads((path / "metrics.json").read_text()) if (path / "metrics.json").is_file() else {}
    except (OSError, json.JSONDecodeError, KeyError) as e:
        raise DistillError(f"{path}: the run directory is incomplete or corrupt ({e})") from None
    run = Run(path, cfg, encoders, schema_d, metrics_d)
    for role in ROLES:
        f = path / f"{role}.safetensors"
        if not f.is_file():
            continue
        with torch.random.fork_rng(devices=[]):  # build seeds torch's RNG: leave the caller's as it was
            model, names = build(cfg, encoders, role, 0)
        try:
            missing, unexpected = load_model(model, str(f), strict=True)
        except Exception as e:  # safetensors raises several types for truncated / foreign files
            raise DistillError(f"{f}: cannot load the checkpoint ({str(e).splitlines()[0]})") from None
        model.eval()
        run.models[role], run.features[role] = model, names
    return run
