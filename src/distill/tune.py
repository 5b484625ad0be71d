"""`distill tune`: search the distillation settings on validation, then check the choice on test.

    tune(cfg, trials=20)  →  <output>/study.journal   the Optuna study (resumable, shareable)
                             <output>/best.yaml       `distill train best.yaml` retrains the choice
                             <output>/compare.json    the choice vs the baseline over seeds, on test, with the verdict
                             <output>/tune.md, .html  the trial table and the pictures

The search (Optuna, TPE sampler, median pruning on the validation metric) covers λ, T, the λ
schedule and its k, the mode, and optionally the student's lr and epochs (`tune:` in the config,
config.TuneConfig). Trial 0 is always the baseline (λ = 0, enqueued), so "no distillation" competes.

Cost: the data is read and encoded once per process; the async teacher is trained once and its
logits cached (in memory and under <output>/cache, keyed by what the teacher depends on), so an
async trial costs one student's training; the baseline is trained once (its validation metric
cached the same way) and is the λ = 0 trial's value (a λ = 0 student is the baseline bit for bit).
Dropout draws from torch's global RNG: the cache keeps its state after the teacher's training too,
and an async trial (and the baseline) starts from it, as `distill train`'s async student does, so
best.yaml reproduces its trial also with dropout. `--explain` (explain()): permutation importance of
each privileged feature for the cached teacher, on validation.
A sync trial trains its own teacher too, so sync is searched only when `tune.modes` lists it.

Several processes on one storage share one study; each asks Optuna for its next trial, so no
trial runs twice. A process killed mid-trial leaves it RUNNING: on restart, a RUNNING trial of
this host whose process is gone is marked FAIL and its parameters enqueued again (journal and
SQLite); on a database URL Optuna's heartbeat does the same across machines.
"""
from __future__ import annotations

import hashlib
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

import torch

from distill import outputs, phases, results, schedules
from distill.config import Config, TuneConfig, dump_config
from distill.errors import DistillError
from distill.training.common import RunLog
from distill.training.loop import Plan

MARK = "tune.json"  # what says a directory is a tune's (outputs.py's rule: never replace what distill did not write)


def _optuna():
    try:
        import optuna
    except ImportError:
        raise DistillError("distill tune needs optuna: pip install 'distill[tune]'") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def default_output(cfg: Config) -> Path:
    return Path(cfg.output) / "tune"


def open_storage(url: str | None, output: Path):
    """The study's storage: a journal file in `output` by default, any Optuna URL otherwise
    (sqlite:///file.db, postgresql://..., mysql://...; a path ending in .journal is a journal file)."""
    optuna = _optuna()
    from optuna.storages.journal import JournalFileBackend, JournalStorage
    if url is None or url.endswith(".journal"):
        return JournalStorage(JournalFileBackend(str(Path(url) if url else output / "study.journal")))
    if url.startswith("sqlite:"):
        kw: dict[str, Any] = {"engine_kwargs": {"connect_args": {"timeout": 60}}}
    else:  # several machines: a trial whose process stopped beating is failed and retried once
        kw = {"heartbeat_interval": 30, "grace_period": 120,
              "failed_trial_callback": optuna.storages.RetryFailedTrialCallback(max_retry=1)}
    for attempt in range(5):
        try:
            return optuna.storages.RDBStorage(url, **kw)
        except Exception as e:  # noqa: BLE001 - sqlalchemy's errors, without importing sqlalchemy
            # two processes creating a new database's tables at once: the loser finds them made on a retry
            if type(e).__module__.startswith("sqlalchemy.exc") and "constraint" in str(e).lower() and attempt < 4:
                time.sleep(0.5 + attempt)
                continue
            if type(e).__module__.startswith("sqlalchemy") or isinstance(e, (ValueError, ImportError)):
                raise DistillError(f"--storage {url}: {str(e).splitlines()[0]}") from None
            raise
    raise AssertionError("unreachable")


# ----------------------------------------------------------------------------- the trial's config


def trial_config(cfg: Config, params: dict[str, Any]) -> Config:
    """`cfg` with a trial's parameters applied: the config `distill train` would run for it."""
    c = cfg.model_copy(deep=True)
    d = c.distillation
    d.mode = params.get("mode", (cfg.tune or TuneConfig()).modes[0])
    d.weight = float(params["weight"])
    if "temperature" in params:
        d.temperature = float(params["temperature"])
    if "schedule" in params:
        d.schedule.type = params["schedule"]
        d.schedule.steps = int(params.get("schedule_steps", 0)) if params["schedule"] != "constant" else 0
    if "lr" in params:
        c.train.lr = float(params["lr"])
    if "epochs" in params:
        c.train.epochs = int(params["epochs"])
    return c


def suggest(trial, cfg: Config, space: TuneConfig, steps_per_epoch: int) -> dict[str, Any]:
    """Draw one trial's parameters. A λ of exactly 0 (the enqueued baseline) draws nothing else."""
    p: dict[str, Any] = {}
    if len(space.modes) > 1:
        p["mode"] = trial.suggest_categorical("mode", space.modes)
    p["weight"] = trial.suggest_float("weight", *space.weight)
    if p["weight"] == 0.0:
        return p
    if space.temperature:
        p["temperature"] = trial.suggest_float("temperature", *space.temperature, log=space.temperature[0] > 0)
    if space.lr:
        p["lr"] = trial.suggest_float("lr", *space.lr, log=True)
    if space.epochs:
        p["epochs"] = trial.suggest_int("epochs", *space.epochs)
    p["schedule"] = trial.suggest_categorical("schedule", space.schedules)
    if p["schedule"] != "constant":
        epochs = p.get("epochs", cfg.train.epochs)
        low, high = space.schedule_steps or (0, max(1, epochs * steps_per_epoch // 2))
        p["schedule_steps"] = trial.suggest_int("schedule_steps", low, high)
    return p


class _Pruning(RunLog):
    """A silent log that hands the student's validation metric to the trial at every evaluation
    and stops the training (optuna.TrialPruned) when the pruner says so."""

    def __init__(self, trial, metric: str, model: str):
        super().__init__(None, quiet=True, tensorboard=False)
        self.trial, self.metric, self.model, self.n = trial, metric, model, 0

    def evaluation(self, record: dict[str, Any]) -> None:
        if record.get("model") != self.model or self.trial is None:
            return
        self.trial.report(float(record[self.metric]), self.n)
        self.n += 1
        if self.trial.should_prune():
            raise _optuna().TrialPruned()


# ----------------------------------------------------------------------------- what trials share


def _key(cfg: Config, *sections: str) -> str:
    """A hash of what a cached model depends on: the data files (path, size, mtime) and `sections`."""
    raw = cfg.model_dump(mode="json")
    files = [raw["data"][s] for s in ("train", "valid", "test") if raw["data"].get(s)]
    stat = [(f, os.path.getsize(f), os.path.getmtime(f)) if os.path.isfile(f) else (f,) for f in files]
    parts = {s: raw[s] for s in sections} | {"data": raw["data"], "task": raw["task"], "features": raw["features"],
                                              "stat": stat}
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


_atomic = outputs.write_atomic  # (tune_report.py uses it too)


class Shared:
    """The data, the cached teacher logits and the baseline's validation metric, each computed once
    (per process, and across processes and restarts through `<output>/cache`)."""

    def __init__(self, cfg: Config, cache: Path):
        from distill.data.dataset import load_splits
        from distill.run import make_loader, place_loader
        self.cfg, self.cache = cfg, cache
        self.splits = load_splits(cfg)
        # where the rows live on a GPU (train.data_on_device), decided once as `distill train` does:
        # without it every trial's batches were copied to the device step by step; on a CPU nothing moves
        self.placement: dict[str, Any] = {}
        self.loader = place_loader(cfg, make_loader(cfg, self.splits), RunLog(None, quiet=True), self.placement)
        self.label = self.splits.encoders.label
        self.metric = Plan.from_config(cfg).metric
        self._logits: dict[str, dict[str, Any]] = {}  # per teacher key: logits, the RNG state after it, weights
        self._baseline: float | None = None
        cache.mkdir(parents=True, exist_ok=True)

    def member(self, cfg: Config, name: str):
        from distill.run import build_member
        return build_member(cfg, self.splits.encoders, name)

    def teacher_logits(self) -> torch.Tensor:
        return self._teacher_state()["logits"]

    def after_teacher(self) -> torch.Tensor:
        """The global RNG state right after the teacher's training: where `distill train`'s async
        student starts drawing its dropout masks, so a trial set to it trains the student train does."""
        return self._teacher_state()["rng"]

    def teacher(self):
        """The trained teacher (its weights from the cache), for --explain."""
        state = self._teacher_state()
        with torch.random.fork_rng(devices=[]):  # building seeds the global RNG: leave it as it was
            t = self.member(self.cfg, "teacher")
        t.module.load_state_dict(state["weights"])
        return t

    def _teacher_state(self) -> dict[str, Any]:
        key = _key(self.cfg, "teacher", "train")
        if key not in self._logits:
            path = self.cache / f"teacher-{key}.pt"
            saved = torch.load(path, weights_only=True) if path.is_file() else None
            if not isinstance(saved, dict):  # none yet, or a cache of logits only (before the RNG state was kept)
                teacher = self.member(self.cfg, "teacher")
                # build the student and the baseline too, as `distill train` does before it trains the
                # teacher: the global RNG (dropout) then starts the teacher's training where train's does
                self.member(self.cfg, "student"), self.member(self.cfg, "baseline")
                phases.fit_teacher(teacher, self.loader, self.splits.valid, self.label, Plan.from_config(self.cfg))
                logits = phases.cache_teacher_logits(teacher, self.loader, precision=self.cfg.train.precision)
                saved = {"logits": logits, "rng": torch.get_rng_state(), "weights": teacher.module.state_dict()}
                _atomic(path, lambda p: torch.save(saved, p))
            self._logits[key] = saved
        return self._logits[key]

    def baseline(self, after_teacher: bool = False) -> float:
        """The λ = 0 trial's value. `after_teacher` (async): trained from the RNG state the async
        student starts from (`after_teacher()`), so that it is what `distill train` of the λ = 0
        config gives for the student also when the student has dropout."""
        if self._baseline is None:
            sections = ("student", "train") + (("teacher",) if after_teacher else ())
            path = self.cache / f"baseline-{_key(self.cfg, *sections)}.json"
            if path.is_file():
                self._baseline = float(json.loads(path.read_text())["valid"])
            else:
                b = self.member(self.cfg, "baseline")
                if after_teacher:
                    torch.set_rng_state(self.after_teacher())
                s = phases.fit_baseline(b, self.loader, self.splits.valid, self.label, Plan.from_config(self.cfg))
                self._baseline = float(s["best_valid"]["baseline"][self.metric])
                _atomic(path, lambda p: p.write_text(json.dumps({"valid": self._baseline})))
        return self._baseline


def objective(shared: Shared, cfg: Config, space: TuneConfig):
    optuna = _optuna()

    def run(trial) -> float:
        trial.set_user_attr("owner", f"{socket.gethostname()}:{os.getpid()}")
        params = suggest(trial, cfg, space, len(shared.loader))
        if params["weight"] == 0.0:  # the baseline: trained once, its value reused
            trial.set_user_attr("baseline", True)
            return shared.baseline(after_teacher=params.get("mode", space.modes[0]) == "async")
        c = trial_config(cfg, params)
        plan = Plan.from_config(c)
        d = c.distillation
        lam = lambda step: schedules.lam(d.schedule.type, step, d.weight, d.schedule.steps)  # noqa: E731
        log = _Pruning(trial if space.pruning else None, shared.metric, "student")
        try:
            if d.mode == "async":
                logits = shared.teacher_logits()
                student = shared.member(c, "student")
                torch.set_rng_state(shared.after_teacher())  # dropout masks drawn as in `distill train`
                s = phases.fit_student(student, logits, shared.loader, shared.splits.valid, shared.label, plan,
                                       lam=lam, temperature=d.temperature, log=log)
            else:  # sync: this trial's own teacher, trained with the student
                teacher, student = shared.member(c, "teacher"), shared.member(c, "student")
                if d.share_embeddings:
                    from distill.models.parts import share_tables
                    common = [n for n in student.features if n in teacher.features and n not in d.separate_embeddings]
                    share_tables(teacher.module, student.module, common)
                    if d.share_sequence_encoder:  # as recipes.share does (models/sequence.py)
                        from distill.models.parts import share_sequence_encoders
                        share_sequence_encoders(teacher.module, student.module, common)
                s = phases.fit_together(teacher, student, shared.loader, shared.splits.valid, shared.label, plan,
                                        lam=lam, temperature=d.temperature, log=log)
        except DistillError as e:
            if "diverged" not in str(e):
                raise
            trial.set_user_attr("diverged", str(e))
            raise optuna.TrialPruned() from None  # a diverging lr is a bad setting, not a broken study
        return float(s["best_valid"]["student"][shared.metric])

    return run


# ----------------------------------------------------------------------------- --explain

EXPLAIN_REPEATS = 5  # shuffles per feature: the interval is over these


def explain(shared: Shared, repeats: int = EXPLAIN_REPEATS) -> list[dict[str, Any]]:
    """How much each privileged feature adds to the teacher: permutation importance on validation.

    The search's trained teacher (the cached one) scores the validation split with one privileged
    feature's encoded column shuffled across rows, `repeats` times (seeded shuffles); drop = intact −
    shuffled on the stopping metric (sign flipped for a lower-is-better one: positive = the feature
    helps), mean and 95% t-interval over the shuffles. No retraining: it says what this teacher
    uses, not what a teacher without the feature would learn from the others (features that carry
    the same signal share the credit). Largest drop first.
    """
    from dataclasses import replace

    from distill.training.common import evaluate
    valid = shared.splits.valid
    if valid is None:
        raise DistillError("--explain: needs a validation split (data.valid) to shuffle the privileged features on")
    privileged = {f.name for f in shared.cfg.features if f.privileged}
    teacher = shared.teacher()
    names = [n for n in teacher.features if n in privileged]
    sign = 1.0 if results.higher_is_better(shared.metric) else -1.0

    def score(data) -> float:
        return float(evaluate(teacher.module, data, teacher.features, shared.label)[shared.metric])

    intact, rows = score(valid), []
    for k, name in enumerate(names):
        drops = []
        for r in range(repeats):
            perm = torch.randperm(len(valid), generator=torch.Generator().manual_seed(1000 * k + r))
            shuffled = replace(valid, features=valid.features | {name: valid.features[name][perm]}, packs=[])
            drops.append(sign * (intact - score(shuffled)))
        drop, low, high = results.t_interval(drops) if repeats > 1 else (drops[0], None, None)
        rows.append({"feature": name, "metric": shared.metric, "intact": intact, "drop": drop, "low": low,
                     "high": high, "repeats": repeats})
    return sorted(rows, key=lambda r: -r["drop"])


def explain_lines(rows: list[dict[str, Any]]) -> list[str]:
    """The --explain table as printed."""
    if not rows:
        return ["--explain: the teacher reads no privileged feature (nothing to explain)"]
    r0 = rows[0]
    width = max(len("feature"), *(len(r["feature"]) for r in rows))
    out = [f"what each privileged feature adds to the teacher (validation {r0['metric']} {r0['intact']:.4f}; "
           f"drop when the column is shuffled, {r0['repeats']} shuffles):",
           f"  {'feature':<{width}}  {'drop':>8}  95% interval"]
    for r in rows:
        interval = "" if r["low"] is None else f"[{r['low']:+.4f}, {r['high']:+.4f}]"
        out.append(f"  {r['feature']:<{width}}  {r['drop']:+8.4f}  {interval}")
    return out


# ----------------------------------------------------------------------------- the study


def _recover(study, storage) -> None:
    """A RUNNING trial of this host whose process is gone (killed): FAIL it and enqueue its
    parameters again, so the study runs it once more and counts it once."""
    optuna = _optuna()
    host = socket.gethostname()
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        owner = t.user_attrs.get("owner", "")
        h, _, pid = owner.rpartition(":")
        if h != host or not pid.isdigit() or _alive(int(pid)):
            continue
        storage.set_trial_state_values(t._trial_id, state=optuna.trial.TrialState.FAIL)
        study.enqueue_trial(t.params, user_attrs={"retry_of": t.number})


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def prepare(output: Path) -> None:
    """Create `output` or continue a tune there; refuse a directory distill's tune did not write."""
    outputs.refuse_unsafe(output)
    # another tune process may be writing the mark this instant (its temporary file is ours too)
    theirs = output.is_dir() and any(not p.name.startswith(MARK) for p in output.iterdir())
    if output.exists() and (not output.is_dir() or (theirs and not (output / MARK).is_file())):
        raise DistillError(f"{output}: holds files distill tune did not write (no {MARK}); choose another --output")
    output.mkdir(parents=True, exist_ok=True)
    if not (output / MARK).is_file():
        _mark(output, {})  # first, before the study: a second process started now sees a tune's directory


def tune(cfg: Config, trials: int = 20, timeout: float | None = None, storage: str | None = None,
         study_name: str | None = None, output: str | Path | None = None, seeds: int = 3,
         quiet: bool = False, explain_features: bool = False) -> dict[str, Any]:
    """Run (or continue) the study until it holds `trials` finished trials, then retrain the best
    over `seeds` seeds against the baseline (seeds=0: search only). `explain_features`: also how much
    each privileged feature adds to the teacher (`explain`). Returns tune.json's content.

    >>> summary = tune(load_config("config.yaml"), trials=20)      # doctest: +SKIP
    >>> summary["best"]["params"], summary["compare"]["verdict"]["headline"]
    """
    optuna = _optuna()
    if trials < 1:
        raise DistillError("--trials: must be at least 1")
    if seeds < 0:
        raise DistillError("--seeds: must be 0 (search only) or more")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise DistillError("tune runs in one process; start several `distill tune` on one --storage instead")
    if cfg.distillation.teacher_checkpoint:
        raise DistillError("distillation.teacher_checkpoint: tune trains its own teacher; remove the key")
    if cfg.data.streaming:
        raise DistillError("data.streaming: tune keeps the data in memory for every trial; set it to false")
    space = cfg.tune or TuneConfig()
    from distill.recipes import check
    for mode in space.modes:  # each mode's own rules, once, before any training
        check(trial_config(cfg, {"mode": mode, "weight": 0.0}))
    output = Path(output) if output else default_output(cfg)
    prepare(output)
    name = study_name or "distill"
    store = open_storage(storage, output)
    metric = Plan.from_config(cfg).metric
    direction = "maximize" if results.higher_is_better(metric) else "minimize"
    sampler = optuna.samplers.TPESampler(seed=cfg.train.seed, n_startup_trials=5)  # reseeded below, once the study is read
    pruner = optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1) if space.pruning else optuna.pruners.NopPruner()
    try:
        study = optuna.create_study(storage=store, study_name=name, direction=direction, sampler=sampler,
                                    pruner=pruner, load_if_exists=True)
    except ValueError as e:  # e.g. the study exists with the other direction
        raise DistillError(f"--study {name}: {e}") from None
    if study.direction.name.lower() != direction:
        raise DistillError(f"--study {name}: exists with direction {study.direction.name.lower()}, "
                           f"this config's metric {metric} needs {direction}")
    _mark(output, {"study": name, "storage": storage or str(output / "study.journal"), "metric": metric,
                   "direction": direction})
    _recover(study, store)
    # seeded from train.seed and the trials already there: a study run alone (or resumed) draws the same
    # points every time; a process joining one that another process is running mixes in its pid, so two
    # processes do not draw the same points
    present = study.get_trials(deepcopy=False)
    joining = any(t.state == optuna.trial.TrialState.RUNNING for t in present)
    study.sampler = optuna.samplers.TPESampler(
        seed=cfg.train.seed * 100_003 + len(present) + (os.getpid() % 100_003 * 7_919 if joining else 0), n_startup_trials=5)
    if not any(t.user_attrs.get("baseline") or t.params.get("weight") == 0.0 for t in study.get_trials(deepcopy=False)):
        base = {"weight": 0.0} | ({"mode": space.modes[0]} if len(space.modes) > 1 else {})
        study.enqueue_trial(base, user_attrs={"baseline": True}, skip_if_exists=True)

    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    torch.use_deterministic_algorithms(cfg.train.deterministic)
    shared = Shared(cfg, output / "cache")
    run = objective(shared, cfg, space)
    with Progress(trials, metric, quiet) as bar:
        bar.update(study)
        t0 = time.monotonic()
        while True:
            if _counted(study) >= trials:
                break
            left = None if timeout is None else timeout - (time.monotonic() - t0)
            if left is not None and left <= 0:
                break
            study.optimize(run, n_trials=1, timeout=left, catch=())
            bar.update(study)
    importance = explain(shared) if explain_features else None
    summary = finish(study, cfg, output, name, metric, seeds, quiet, importance)
    return summary


def _counted(study) -> int:
    """Trials finished or under way (in this process or another): what --trials counts."""
    s = _optuna().trial.TrialState
    return len(study.get_trials(deepcopy=False, states=(s.COMPLETE, s.PRUNED, s.RUNNING)))


def _mark(output: Path, info: dict[str, Any]) -> None:
    path = output / MARK
    old = json.loads(path.read_text()) if path.is_file() else {}
    _atomic(path, lambda p: p.write_text(json.dumps(old | info, indent=2)))


def best_config(cfg: Config, params: dict[str, Any], output: Path) -> Config:
    """The best trial as a full config whose `distill train` reproduces it (its own output)."""
    c = trial_config(cfg, params)
    c.output = str(output / "best")
    c.tune = cfg.tune
    return c


def finish(study, cfg: Config, output: Path, name: str, metric: str, seeds: int, quiet: bool,
           importance: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """best.yaml, the final comparison over seeds on test, tune.json and the report."""
    from distill.tune_report import write_report
    optuna = _optuna()
    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not done:
        raise DistillError(f"study '{name}': no trial finished yet; run tune again with more --trials or a longer --timeout")
    best = study.best_trial
    best_cfg = best_config(cfg, best.params, output)
    _atomic(output / "best.yaml", lambda p: p.write_text(
        f"# distill tune: the best of {len(done)} finished trials (trial {best.number}, valid {metric} {best.value:.5f})\n"
        + dump_config(best_cfg)))
    is_baseline = best.params.get("weight") == 0.0
    baseline = next((t.value for t in done if t.params.get("weight") == 0.0), None)
    summary: dict[str, Any] = {
        "study": name, "metric": metric, "direction": study.direction.name.lower(), "trials": len(study.trials),
        "best": {"number": best.number, "value": best.value, "params": best.params, "baseline": is_baseline},
        "baseline_valid": baseline,
    }
    say = (lambda s: None) if quiet else (lambda s: print(s, flush=True))
    if is_baseline:
        say("no distillation setting beat the baseline on validation; the student to ship is the baseline")
    else:
        say(f"best trial {best.number}: valid {metric} {best.value:.5f} (baseline {baseline:.5f}) with {_params_text(best.params)}")
    if seeds > 0:
        from distill.compare import compare
        say(f"retraining the choice over {seeds} seed{'s' if seeds != 1 else ''} against the baseline, reported on test")
        final = output / "final"
        comp = compare(best_cfg, seeds=seeds, output=final, overwrite=(final / "compare.json").is_file(), quiet=True)
        gains = valid_gains(final, cfg.train.seed, seeds, metric, summary["direction"])
        shipped = "baseline" if is_baseline or sum(gains) <= 0 else "student"
        comp = comp | {"tune": {"trial": best.number, "params": best.params, "valid": best.value,
                                "valid_gains": gains, "shipped": shipped}}
        _atomic(output / "compare.json", lambda p: p.write_text(json.dumps(comp, indent=2)))
        summary["compare"], summary["valid_gains"], summary["shipped"] = comp, gains, shipped
        if "verdict" in comp:
            say(comp["verdict"]["headline"])
        if shipped == "baseline" and not is_baseline:
            # the guard against harm: the search's margin did not survive retraining, so the student to
            # ship is the one trained alone (decided on validation only; test is reported, never used)
            base_cfg = best_config(cfg, {"weight": 0.0}, output)
            _atomic(output / "best.yaml", lambda p: p.write_text(
                f"# distill tune: the baseline (λ = 0). Trial {best.number} ({_params_text(best.params)}) was best on "
                f"valid {metric} in the search, but retrained over {seeds} seed{'s' if seeds != 1 else ''} it does not beat "
                f"the baseline on validation (mean gain {sum(gains) / len(gains):+.5f})\n" + dump_config(base_cfg)))
            say(f"retrained over {seeds} seed{'s' if seeds != 1 else ''}, the choice does not beat the baseline on validation "
                f"(mean {metric} gain {sum(gains) / len(gains):+.5f}): the student to ship is the baseline; best.yaml trains it")
    else:  # search only: a comparison left by an earlier run of this tune is of another choice
        (output / "compare.json").unlink(missing_ok=True)
    summary["explain"] = importance  # None without --explain (tune.json keeps no stale table)
    if importance is not None:
        for line in explain_lines(importance):
            say(line)
    _mark(output, summary)
    write_report(study, summary, output)
    return summary


def valid_gains(final: Path, seed: int, seeds: int, metric: str, direction: str) -> list[float]:
    """Per seed of the final comparison: the student's validation `metric` minus the baseline's,
    signed so that more is better (a loss such as logloss counts down)."""
    sign = 1.0 if direction == "maximize" else -1.0
    out = []
    for k in range(seeds):
        m = json.loads((final / f"seed_{seed + k}" / "metrics.json").read_text())
        out.append(sign * (m["student"]["valid"][metric] - m["baseline"]["valid"][metric]))
    return out


def _params_text(params: dict[str, Any]) -> str:
    out = []
    for k, v in params.items():
        out.append(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}")
    return ", ".join(out)


class Progress:
    """A rich bar with the best so far on a terminal, one plain line per trial otherwise (stderr)."""

    def __init__(self, total: int, metric: str, quiet: bool):
        self.total, self.metric, self.quiet, self.bar, self.task = total, metric, quiet, None, None
        self.seen: set[int] = set()  # trials already printed (those finished before a resume too)

    def __enter__(self) -> "Progress":
        if not self.quiet and sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress as Bar, TextColumn, TimeElapsedColumn
            self.bar = Bar(TextColumn("tune"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                           TextColumn("{task.description}"), console=Console(stderr=True))
            self.bar.start()
            self.task = self.bar.add_task("", total=self.total)
        return self

    def update(self, study) -> None:
        s = _optuna().trial.TrialState
        finished = [t for t in study.get_trials(deepcopy=False) if t.state in (s.COMPLETE, s.PRUNED)]
        complete = [t for t in finished if t.state == s.COMPLETE]
        best = f"best {self.metric} {study.best_value:.5f} (trial {study.best_trial.number})" if complete else "no trial finished"
        if self.bar is not None:
            self.bar.update(self.task, completed=min(len(finished), self.total), description=best)
        elif not self.quiet:
            for t in sorted(finished, key=lambda t: t.number):
                if t.number not in self.seen:
                    what = "pruned" if t.state == s.PRUNED else f"{self.metric} {t.value:.5f}"
                    print(f"trial {t.number}: {what} ({_params_text(t.params)}); {best}", file=sys.stderr, flush=True)
        self.seen |= {t.number for t in finished}

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.stop()
