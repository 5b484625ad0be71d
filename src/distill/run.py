"""A run end to end: read data, build the models the mode's recipe declares (recipes.py), run the
recipe (its phases: phases.py), evaluate, and write the run directory. Also `load_run` to use it later.

Run directory (written under `<output>.partial` and renamed when complete, so it appears whole):
    config.yaml          the resolved config (also inside every checkpoint's metadata)
    schema.json          features (serving / privileged), task, label classes
    encoders.json        fitted vocabularies and statistics: serving needs no training data
    teacher.safetensors  student.safetensors  baseline.safetensors
                         (several teachers: teacher.<name>.safetensors each, gate.safetensors for a gated ensemble)
    metrics.json         {"teacher": {split: {...}}, "student": {...}, "baseline": {...}} (several: "teacher:<name>", "ensemble")
    steps.jsonl          one line per step: phase, step, epoch, λ, lr, L_s, L_d, L_t, loss
    events.out.tfevents.* the same curves and the validation metrics for TensorBoard
    evals.jsonl          validation metrics at each evaluation
    test_predictions.npz label, group and each model's output per test row (the bootstrap verdict, distill.results)
    run.json             timings, shared tables, filled values, warnings, versions, world size

Under `torchrun --nproc_per_node=N -m distill train CONFIG` the same function runs on every rank;
only rank 0 writes the run directory (README, "Training on several processes"; `distill.distributed`).
"""
from __future__ import annotations

import copy
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

from distill import device as devices
from distill import distributed, outputs, recipes, schema
from distill.config import Config, config_from_dict, dump_config, require_config
from distill.data.dataset import Encoders, Splits, load_splits
from distill.data.io import read_table, resolve_files
from distill.errors import DistillError
from distill.member import Member
from distill.models import build_model
from distill.models.parts import FeatureInfo
from distill.data.loader import GroupedLoader, InMemoryLoader
from distill.data.stream import StreamingLoader
from distill.recipes import Context
from distill.training.checkpoint import (Checkpoints, CheckpointError, atomic_write, data_fingerprint, disk_full,
                                        require_good, write_failed)
from distill.training.common import RunLog, evaluate, label_values, predict_logits, to_output
from distill.training.log import trim_events

ROLES = ("teacher", "student", "baseline")


def feature_infos(encoders: Encoders, names: list[str]) -> tuple[FeatureInfo, ...]:
    def info(n: str) -> FeatureInfo:
        e = encoders.features[n]
        if e.kind != "sequence":
            return FeatureInfo(n, e.kind, e.cardinality)
        return FeatureInfo(n, e.kind, e.cardinality, shares=e.shares, encoder=e.encoder, max_len=e.max_len,
                           side_of=e.side_of)
    return tuple(info(n) for n in names)


def build(cfg: Config, encoders: Encoders, role: str, seed: int) -> tuple[nn.Module, list[str]]:
    """Build the teacher or the student (the baseline is a student) with its own seeded init."""
    section, mc = schema.section_of(cfg, role)  # teacher:<name> is built from teachers.<name>
    names = [f.name for f in schema.model_features(cfg, role if role.startswith("teacher") else "student")]
    offset = 0 if role == "teacher" else 1  # baseline and student start identical
    if role.startswith("teacher:"):  # several teachers: each its own init, none equal to the student's
        offset = 100 + list(cfg.teachers).index(role.removeprefix("teacher:"))
    torch.manual_seed(seed + offset)
    try:
        model = build_model(mc, feature_infos(encoders, names), encoders.label.out_dim,
                            sparse=cfg.train.sparse_embeddings)
    except (ValueError, TypeError) as e:
        raise DistillError(f"{section}.model '{mc.model}': {e}") from None
    return model, names


def prepare_output(output: Path, overwrite: bool, kind: str = "run") -> Path:
    """A fresh, locked `<output>.partial` (README, "What distill may replace"); an interrupted run's
    checkpoints there are discarded only with `overwrite`."""
    return outputs.start(output, kind, replace=overwrite, keep_checkpoints=not overwrite)


def publish(partial: Path, output: Path) -> None:
    outputs.swap(partial, output)  # the old run aside, the new one in, then the old one deleted


def _precision(cfg: Config, device) -> str:
    """train.precision as resolved on `device` (auto: bf16 or fp32), for run.json."""
    return devices.resolve_precision(cfg.train.precision, device)[0]


def save_checkpoint(model: nn.Module, path: Path, cfg: Config, role: str) -> None:
    if any(p.device.type != "cpu" for p in model.parameters()):  # a GPU-trained model is saved from a CPU copy
        model = copy.deepcopy(model).cpu()
    tmp = path.with_name(path.name + ".tmp")
    try:
        save_model(model, str(tmp), metadata={"role": role, "config": json.dumps(cfg.model_dump(mode="json"))})
    except BaseException:
        tmp.unlink(missing_ok=True)  # a half-written model must not stay behind (a full disk stays full)
        raise
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
    require_config(cfg)
    recipe = recipes.recipe(cfg)
    warnings = recipes.check(cfg)
    output = Path(output or cfg.output)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    torch.use_deterministic_algorithms(cfg.train.deterministic)
    teacher_run = _teacher_run(cfg) if cfg.distillation.teacher_checkpoint else None
    # Under torchrun only rank 0 touches the run directory (README, "Training on several processes"); a world of one
    # runs exactly the lines it always did.
    device = devices.resolve(cfg.train.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)  # NCCL's collectives run on the current device
    distributed.setup(devices.backend(device))
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
        read = splits is None
        splits, loader, info = _load(cfg, splits, teacher_run, warnings, log)
        if read:  # validate's separator check, on data that loaded: a wrong one trains each whole string as one unseen id
            from distill.init import separator_warnings
            for w in separator_warnings(cfg):
                warnings.append(w)  # info["warnings"] is this list: run.json keeps it (train -q prints it after training)
                log.info(f"warning: {w}")
        members, ckpt = _fit(cfg, recipe, splits, loader, teacher_run, info, log, partial, resume, main)
        models = {m.name: m.module for m in members.values()}
        features = {m.name: m.features for m in members.values()}
        results = {n: _evaluate_all(models[n], features[n], splits, splits.encoders.label, cfg.task.ranking_k) for n in models}

        def finish() -> None:
            try:
                _write_run(partial, cfg, splits.encoders, models, results, info)
                try:  # for the bootstrap verdict (distill.results)
                    write_test_predictions(partial, models, features, splits)
                except OSError as e:
                    raise write_failed(partial / "test_predictions.npz", e) from None
                try:
                    log.close()
                except OSError as e:
                    raise write_failed(partial / "steps.jsonl", e) from None
            except DistillError as e:  # the disk filled up (or failed) with training done
                for name in (*RUN_FILES, *(weights_file(n) or "gate.safetensors" for n in models)):
                    (partial / name).unlink(missing_ok=True)  # whole but useless without the rest; the checkpoints hold the models
                if ckpt.files():
                    raise CheckpointError(f"{e}; the trained models are kept in {partial / 'checkpoints'}: "
                                          f"free some space and rerun with --resume {output}") from None
                raise DistillError(f"{e}; the trained models are lost (train.checkpoint_every is off, "
                                   "so nothing was kept to resume from)") from None
            shutil.rmtree(partial / "checkpoints", ignore_errors=True)  # the run is complete: weights are saved
            publish(partial, output)

        distributed.on_main(finish)
    except BaseException as error:
        try:
            log.close()
        except Exception:  # a full disk (TensorBoard's thread re-raises its own): the error that got us here is the one to report
            pass
        outputs.release(partial)
        e = distributed.peer_failure(error) or error  # a lost peer reads as one line, not a gloo traceback
        if main:  # rank 0 owns the run directory and decides what to keep
            if cfg.train.checkpoint_every and any((partial / "checkpoints").glob("ckpt-*.pt")):
                if isinstance(e, DistillError) and not isinstance(e, CheckpointError):  # keep what can be resumed, and say how
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


def _load(cfg: Config, splits: Splits | None, teacher_run: "Run | None", warnings: list[str],
          log: RunLog) -> tuple[Splits, Any, dict[str, Any]]:
    """Read and encode the splits (unless given), make the training loader, start run.json's info."""
    t0 = time.perf_counter()
    if splits is None:
        splits = load_splits(cfg, encoders=teacher_run.encoders if teacher_run else None)
    loader = make_loader(cfg, splits)
    distributed.agree("encoders and training rows", (splits.encoders.to_dict(), loader.num_rows))
    info: dict[str, Any] = {"mode": cfg.distillation.mode, "seed": cfg.train.seed, "warnings": warnings,
                            "versions": versions(), "world_size": distributed.world(),
                            "rows": {"train": loader.num_rows}, "load_seconds": time.perf_counter() - t0,
                            "filled_values": splits.train_missing or {}}
    loader = place_loader(cfg, loader, log, info)
    for n, c in (splits.train_missing or {}).items():  # a category's NaN and inf count here too
        how = "filled and flagged" if splits.encoders.features[n].kind == "numeric" else "read as missing (the out-of-vocabulary bucket)"
        log.info(f"'{n}': {c} missing or non-finite value(s) in the training split, {how}")
    return splits, loader, info


def _fit(cfg: Config, recipe: recipes.Recipe, splits: Splits, loader, teacher_run: "Run | None", info: dict[str, Any],
         log: RunLog, partial: Path, resume: bool, main: bool) -> tuple[dict[str, Member], Checkpoints]:
    """Build the models the recipe declares, resume from a checkpoint if asked, run the recipe."""
    members = build_members(cfg, splits.encoders, teacher_run)
    from distill.models.two_tower import tower_split
    towers = {m.name: t for m in members.values() if (t := tower_split(m.module, m.features))}
    if towers:  # each two-tower model's user and item features (export --towers splits on these)
        info["towers"] = towers
    device = devices.resolve(cfg.train.device)
    for m in members.values():  # a teacher loaded from teacher_checkpoint too
        m.module.to(device)
    if device.type == "cuda":
        devices.set_tf32(cfg.train.tf32)
    info.update(devices.describe(device) | {"precision": _precision(cfg, device), "tf32": cfg.train.tf32})
    distributed.seed_rank(cfg.train.seed)
    if "teacher" in members:
        t, s = members["teacher"], members["student"]
        log.info(f"teacher: {cfg.teacher.model} on {len(t.features)} features ({t.parameters_count():,} parameters); "
                 f"student: {cfg.student.model} on {len(s.features)} serving features ({s.parameters_count():,} parameters)")
    # What the checkpoints were trained on, so a resume on other data is refused (only rank 0 reads them)
    fingerprint = _fingerprint(cfg, splits.encoders) if main and cfg.train.checkpoint_every else None
    ckpt = Checkpoints(partial / "checkpoints", cfg.train.checkpoint_every, {m.name: m.module for m in members.values()},
                       write=main, fingerprint=fingerprint, on_save=log.flush)
    ctx = Context(cfg, members, loader, splits.valid, splits.encoders.label, log, ckpt, info,
                  build=lambda name, seed: build_member(cfg, splits.encoders, name, seed))
    recipe.prepare(ctx)  # before resuming: a checkpoint's weights load into tables already shared
    if resume:
        _resume(ckpt, partial)
        for w in ckpt.warnings:
            log.info(f"warning: {w}")
    ctx.loader = distributed.shard(loader)  # under torchrun, rank r takes the r-th slice of each global batch
    recipe.train(ctx)
    info["phases"] = ckpt.completed
    info["train_seconds"] = sum(v["wall_seconds"] for k, v in ckpt.completed.items() if k != "baseline")
    if "baseline" in ckpt.completed:
        info["baseline_seconds"] = ckpt.completed["baseline"]["wall_seconds"]
    return members, ckpt


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


def _fingerprint(cfg: Config, encoders: Encoders) -> dict[str, Any]:
    files = {split: resolve_files(spec) for split in ("train", "valid", "test") if (spec := getattr(cfg.data, split))}
    return data_fingerprint(files, encoders.to_dict())


def make_loader(cfg: Config, splits: Splits) -> "InMemoryLoader | StreamingLoader":
    if cfg.data.streaming:
        soft = cfg.distillation.soft_label if cfg.distillation.mode == "offline" else None
        return StreamingLoader(cfg, splits.encoders, soft_label=soft)
    assert splits.train is not None
    from distill.training import ranking
    if ranking.wants_groups(cfg) and cfg.distillation.group_batches == "whole":  # whole groups per batch
        return GroupedLoader(splits.train, cfg.train.batch_size, cfg.train.seed,
                             max_group_rows=cfg.distillation.max_group_rows)
    return InMemoryLoader(splits.train, cfg.train.batch_size, cfg.train.seed)


def place_loader(cfg: Config, loader, log: RunLog, info: dict[str, Any]):
    """train.data_on_device: where the training rows live while a GPU trains (distill.device.place_data),
    logged once and kept in run.json ("data": "device" | "pinned" | "cpu", with the numbers). A
    streamed split is decided at its first shuffle buffer (StreamingLoader.placed)."""
    device, t = devices.resolve(cfg.train.device), cfg.train
    if isinstance(loader, StreamingLoader):
        if device.type != "cuda":
            info["data"] = "cpu"
            return loader

        def decided(place: devices.Placement) -> None:
            log.info(place.describe() + " (per shuffle buffer)")
            info.update(place.record())
        return loader.placed(device, t.data_on_device, t.device_memory_share, on_place=decided)
    place = devices.place_data(loader.data.nbytes(), device, t.data_on_device, t.device_memory_share)
    if device.type == "cuda":  # on a CPU nothing moves: the log stays as it was
        log.info(place.describe())
    info.update(place.record())
    return loader.placed(place)


def build_member(cfg: Config, encoders: Encoders, name: str, seed: int | None = None) -> Member:
    """A freshly initialised model `name` ("teacher", "student", "baseline") for `cfg`, with its
    features (seed: train.seed by default; the student and the baseline start identical)."""
    module, features = build(cfg, encoders, name, cfg.train.seed if seed is None else seed)
    return Member(name, recipes.role_of(name), module, features)


def build_members(cfg: Config, encoders: Encoders, teacher_run: "Run | None") -> dict[str, Member]:
    """Every model the mode's recipe declares, built up front (so a checkpoint holds them all)."""
    members: dict[str, Member] = {}
    for name in recipes.members(cfg):
        if name == "teacher" and teacher_run is not None:
            members[name] = Member(name, "teacher", teacher_run.models["teacher"], teacher_run.features["teacher"])
        else:
            members[name] = build_member(cfg, encoders, name)
    if cfg.teachers is not None and any(n.startswith("teacher:") for n in members):
        members["ensemble"] = build_ensemble(cfg, encoders, [m for n, m in members.items() if n.startswith("teacher:")])
    return members


def build_ensemble(cfg: Config, encoders: Encoders, teachers: list[Member]) -> Member:
    """The teachers combined (distill.ensemble): evaluated as "ensemble", its gate saved as
    gate.safetensors; it shares the teachers' modules, so it is no model of its own."""
    from distill.ensemble import Ensemble, Gate, fixed_weights, union
    e = cfg.distillation.ensemble
    gate = None
    if e.type == "gate":
        with torch.random.fork_rng(devices=[]):  # the gate's init leaves the teachers' and student's RNG stream alone
            torch.manual_seed(cfg.train.seed + 99)
            gate = Gate(len(teachers), encoders.label.out_dim, e.hidden)
    module = Ensemble(teachers, fixed_weights(cfg, [t.name for t in teachers]), gate)
    return Member("ensemble", "ensemble", module, union([t.features for t in teachers], [f.name for f in cfg.features]))


def weights_file(name: str) -> str | None:
    """Where member `name`'s weights go in the run directory: teacher.safetensors, teacher.<n>.safetensors
    for teacher:<n>, gate.safetensors for a gated ensemble (the teachers' weights are theirs), or None."""
    if name == "ensemble":
        return None
    return name.replace(":", ".") + ".safetensors"


def resume_output(output: Path, cfg: Config) -> Path:
    """The `.partial` directory of an interrupted run, checked against the config."""
    partial = output if output.name.endswith(".partial") else output.with_name(output.name + ".partial")
    if not partial.is_dir():
        hint = " (it finished: nothing to resume)" if (output / "metrics.json").is_file() else ""
        raise DistillError(f"--resume {output}: no interrupted run there (no {partial.name}){hint}")
    outputs.lock(partial, output)  # two trainings in one checkpoint folder would corrupt it
    saved = partial / "config.yaml"
    if saved.is_file():
        import yaml
        theirs = yaml.safe_load(saved.read_text())
        ours = cfg.model_dump(mode="json")
        diff = [k for k in ours if k != "output" and ours.get(k) != theirs.get(k)]
        if diff:
            outputs.release(partial)
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
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:  # the last line, torn by the kill or a full disk: that step replays
                continue
            done = rec["phase"] in ckpt.completed
            redo_from = current["step"] + (0 if name == "steps.jsonl" else 1) if current and rec["phase"] == current["phase"] else None
            if done or (redo_from is not None and rec["step"] < redo_from):
                kept.append(line)
        atomic_write(path, ("\n".join(kept) + "\n" if kept else "").encode())
    if ckpt.logged_until is not None:  # checkpoints before it carry no time: their events are left as they are
        trim_events(partial, ckpt.logged_until)


def _params(m: nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in m.parameters()}.values())


def _evaluate_all(model: nn.Module, features: list[str], splits: Splits, label,
                  ks: list[int] | None = None) -> dict[str, dict[str, float]]:
    out = {}
    ks = ks or [10]
    for split in ("valid", "test"):
        data = getattr(splits, split)
        if data is not None:
            out[split] = evaluate(model, data, features, label, ks)
    if not out and splits.train is not None:
        out["train"] = evaluate(model, splits.train, features, label, ks)
    return out


# What _write_run adds to the .partial beside config.yaml and the logs (removed again if it fails).
RUN_FILES = ("schema.json", "encoders.json", *(f"{r}.safetensors" for r in ROLES), "metrics.json", "run.json",
             "test_predictions.npz")


def _write_run(d: Path, cfg: Config, encoders: Encoders, models: dict[str, nn.Module],
               results: dict, info: dict) -> None:
    """Each file whole or not at all (a full disk leaves no half file); a failure carries the path."""
    files: list[tuple[str, Any]] = [
        ("config.yaml", lambda p: atomic_write(p, dump_config(cfg).encode())),
        ("schema.json", lambda p: atomic_write(p, json.dumps({
            "task": cfg.task.model_dump(), "classes": encoders.label.classes,
            "serving": [f.model_dump() for f in schema.serving(cfg)],
            "privileged": [f.model_dump() for f in schema.privileged(cfg)],
        }, indent=2).encode())),
        ("encoders.json", lambda p: atomic_write(p, json.dumps(encoders.to_dict()).encode())),
        *((weights_file(role), lambda p, m=model, r=role: save_checkpoint(m, p, cfg, r)) for role, model in models.items()
          if weights_file(role)),
        *(("gate.safetensors", lambda p, m=model.gate: save_checkpoint(m, p, cfg, "gate"))
          for role, model in models.items() if role == "ensemble" and model.gate is not None),
        ("metrics.json", lambda p: atomic_write(p, json.dumps(results, indent=2).encode())),
        ("run.json", lambda p: atomic_write(p, json.dumps(info, indent=2, default=float).encode())),
    ]
    for name, write in files:
        try:
            write(d / name)
        except Exception as e:  # safetensors reports a full disk as its own error type
            if isinstance(e, OSError) or disk_full(e):
                raise write_failed(d / name, e) from None
            raise


PREDICTION_ROWS = 200_000  # a larger test split is subsampled (fixed seed): the interval only gets a little wider


def write_test_predictions(d: Path, models: dict[str, nn.Module], features: dict[str, list[str]], splits: Splits) -> None:
    """test_predictions.npz: label, group and each model's output per test row, so that the paired
    bootstrap of `distill.results` can resample the same rows for student and baseline."""
    test = splits.test
    if test is None or test.y is None:
        return
    label = splits.encoders.label
    rows = np.arange(len(test))
    if len(rows) > PREDICTION_ROWS:
        rows = np.sort(np.random.default_rng(0).choice(len(rows), PREDICTION_ROWS, replace=False))
    arrays = {"y": label_values(test, label)[rows]}
    if test.group is not None:
        arrays["group"] = test.group[rows]
    for role, model in models.items():
        arrays[role] = to_output(predict_logits(model, test, features[role]), label)[rows]
    with open(d / "test_predictions.npz", "wb") as f:
        np.savez_compressed(f, **arrays)


def _teacher_run(cfg: Config) -> "Run":
    """The trained teacher named by distillation.teacher_checkpoint (a run directory)."""
    path = Path(cfg.distillation.teacher_checkpoint)
    if path.suffix == ".safetensors":
        path = path.parent
    if not (path / "teacher.safetensors").is_file():
        raise DistillError(f"distillation.teacher_checkpoint: {path} holds no teacher.safetensors (give a run directory)")
    run = load_run(path, roles=("teacher",))
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

    def __repr__(self) -> str:
        # the dataclass's own repr prints every module's layers: pages of text for `run` in a notebook
        models = ", ".join(f"{n} {schema.section_of(self.config, n)[1].model}" for n in self.models)
        return f"Run('{self.path}', {self.config.task.type} on '{self.config.task.label}'; {models})"

    @property
    def members(self) -> list[Member]:
        """Each model with its features (teacher, student, baseline: those the run holds)."""
        return [Member(n, recipes.role_of(n), m, self.features[n]) for n, m in self.models.items()]

    @property
    def serving_features(self) -> list[str]:
        return self.features.get("student") or self.features["baseline"]

    def predict(self, data: Any, role: str = "student") -> np.ndarray:
        """Probabilities (binary), class probabilities (multiclass) or values (regression).

        `data`: a path (Parquet or CSV), a pyarrow Table, a pandas DataFrame or a list of row dicts.

        The student reads serving features only; other columns of `data` are ignored.
        """
        if role not in self.models:
            raise DistillError(f"role: '{role}' is not a model of this run (it holds {', '.join(self.models)})")
        table, where = as_table(data)
        names = self.features[role]
        enc = self.encoders.encode(self.config, table, where, features=names, label=False)
        return to_output(predict_logits(self.models[role], enc, names), self.encoders.label)

    def evaluate(self, data: Any = None) -> dict[str, dict[str, Any]]:
        """Metrics of each model on `data` (default: the run's valid and test splits).

        A model whose features are missing from the data (the teacher without privileged columns)
        is skipped, with the reason in its entry.
        """
        if data is None:
            specs = {s: getattr(self.config.data, s) for s in ("valid", "test") if getattr(self.config.data, s)}
            tables = {s: read_table(p, self.config.data.format) for s, p in specs.items()}
            wheres = specs
        else:
            table, where = as_table(data)
            tables, wheres = {"data": table}, {"data": where}
        out: dict[str, dict[str, Any]] = {}
        for role, model in self.models.items():
            out[role] = {}
            for split, table in tables.items():
                missing = [n for n in self.features[role] if n not in table.column_names]
                if missing:
                    out[role][split] = {"skipped": f"missing column '{missing[0]}'"}
                    continue
                enc = self.encoders.encode(self.config, table, wheres[split], features=self.features[role])
                out[role][split] = evaluate(model, enc, self.features[role], self.encoders.label, self.config.task.ranking_k)
        return out


def as_table(data: Any) -> tuple[pa.Table, str]:
    """(table, how to name it in messages) from a path, a pyarrow Table, a pandas DataFrame (or any
    object with the Arrow stream interface) or a list of row dicts."""
    if isinstance(data, pa.Table):
        return data, "data"
    if isinstance(data, (str, Path)):
        return read_table(str(data)), str(data)
    if type(data).__module__.split(".")[0] == "pandas" and hasattr(data, "columns"):  # pandas is not a dependency
        return pa.Table.from_pandas(data, preserve_index=False), "DataFrame"
    if hasattr(data, "__arrow_c_stream__"):  # polars, pyarrow readers, ...
        return pa.table(data), type(data).__name__
    if isinstance(data, list) and data and all(isinstance(r, dict) for r in data):
        try:
            return pa.Table.from_pylist(data), "rows"
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
            raise DistillError(f"rows: cannot make a table of them ({e})") from None
    raise TypeError(f"data: expected a path, a pyarrow Table, a pandas DataFrame or a non-empty list of row dicts, "
                    f"not {type(data).__name__}")


def load_run(path: str | Path, roles: tuple[str, ...] | list[str] | None = None) -> Run:
    """Load a run directory written by `train` (no training data needed).

    `roles` (default: every checkpoint there) says which models to build: a `module:` model's
    factory is imported to build it, so serving the student must not build the teacher.
    """
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
    many = [n for n in schema.teacher_sections(cfg) if n.startswith("teacher:")]  # several teachers: teacher.<n>.safetensors
    for role in (*many, *ROLES):
        f = path / weights_file(role)
        if not f.is_file() or (roles is not None and role not in roles):
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
