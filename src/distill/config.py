"""Typed configuration: pydantic models inside, YAML at the edge.

Every section forbids unknown keys; `load_config` turns pydantic's errors into one line that names
the file and the key, and suggests the closest valid key for a misspelt one.

    >>> cfg = load_config("examples/demo.yaml")          # doctest: +SKIP
    >>> cfg.distillation.weight
    0.5
"""
from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError, field_validator, model_validator

from distill.errors import DistillError

FeatureType = Literal["categorical", "numeric", "multi_categorical", "sequence"]
BUILTIN_MODELS = ("dnn", "wide_deep", "deepfm", "dcn_v2", "two_tower", "din")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(Strict):
    train: str
    valid: str | None = None
    test: str | None = None
    format: Literal["auto", "parquet", "csv"] = "auto"
    streaming: bool = False  # train from Parquet row groups without loading the split (see data/stream.py)
    shuffle_buffer: int = Field(default=262_144, gt=0)  # streaming: rows shuffled together
    prefetch: int = Field(default=2, ge=0)  # streaming: row groups read ahead on a background thread


class TaskConfig(Strict):
    type: Literal["binary", "multiclass", "regression"] = "binary"
    label: str
    group: str | None = None
    weight: str | None = None
    ranking_k: list[PositiveInt] = Field(default_factory=lambda: [10], min_length=1)  # NDCG@k and recall@k per group (with group)


class FeatureConfig(Strict):
    name: str
    type: FeatureType
    privileged: bool = False
    hash_buckets: int | None = Field(default=None, gt=0)
    min_count: int = Field(default=1, ge=1)
    max_len: int = Field(default=16, gt=0)  # multi_categorical: longest bag kept
    separator: str = " "  # multi_categorical given as a string
    # sequence (data/kinds/sequence.py): a categorical feature whose ids and table it uses (the candidate)
    shares: str | None = None
    # sequence: how its items become one vector (models/sequence.py); None: mean
    encoder: Literal["mean", "din", "self_attention"] | None = None
    # sequence: a side channel of this sequence (e.g. each item's category), one id per item; its
    # embeddings are added to the items' before the encoder, and it is no field of its own
    side_of: str | None = None

    @field_validator("separator")
    @classmethod
    def _separator_not_empty(cls, v: str) -> str:
        if not v:  # YAML reads a bare `separator: |` as an empty block of text, which no string can be split on
            raise ValueError("is empty; quote the character in YAML, e.g. separator: \"|\" (a bare | starts a block of text)")
        return v


class ModelConfig(Strict):
    model: str = "dnn"
    hidden: list[int] = Field(default_factory=lambda: [256, 128])
    embedding_dim: int = Field(default=16, gt=0)
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    cross_layers: int = Field(default=3, ge=1)  # dcn_v2
    tower_dim: int = Field(default=32, gt=0)  # two_tower: size of the vectors that meet in the dot product
    features: Literal["all", "serving", "privileged"] | list[str] | None = None
    user_features: list[str] | None = None  # two_tower
    options: dict[str, Any] = Field(default_factory=dict)  # passed to a `module:` factory

    @field_validator("model")
    @classmethod
    def _known_model(cls, v: str) -> str:
        if v in BUILTIN_MODELS or v.startswith("module:"):
            return v
        close = [m for m in BUILTIN_MODELS if m.startswith(v)] or difflib.get_close_matches(v, BUILTIN_MODELS, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ValueError(f"unknown model '{v}'{hint}; choose one of {', '.join(BUILTIN_MODELS)} or 'module: pkg.mod:factory'")


class ScheduleConfig(Strict):
    type: Literal["constant", "delayed", "linear", "cosine"] = "constant"
    steps: int = Field(default=0, ge=0)


class EnsembleConfig(Strict):
    """How several teachers' logits become one soft label (README, "Several teachers")."""
    type: Literal["mean", "weights", "gate"] = "mean"
    weights: dict[str, float] = Field(default_factory=dict)  # type weights: teacher name -> weight (normalised)
    hidden: int = Field(default=16, gt=0)  # type gate: width of the gate's one hidden layer
    # type gate, mode async: the rows the gate learns on. train: the teachers' logits on the training
    # rows (in-sample: over-confident, the gate learns to trust the one that memorised most); valid:
    # their logits on one half of the validation split (held out), the other half for its early
    # stopping. Then the validation split has taught the gate, so it is no longer clean for the
    # student's early stopping (the test split stays clean).
    fit_on: Literal["train", "valid"] = "train"


class HintConfig(Strict):
    """Hint (FitNets) distillation: the student's last hidden layer pulled toward the teacher's
    through a training-only projection (README, "Hint distillation")."""
    weight: float = Field(default=0.1, ge=0.0)
    loss: Literal["mse", "cosine"] = "mse"
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    layer: str | None = None  # a module of the student whose output is h_s (default: its last hidden layer)
    teacher_layer: str | None = None  # the same for the teacher


class DistillationConfig(Strict):
    mode: Literal["sync", "async", "offline", "none"] = "sync"
    weight: float | None = Field(default=None, ge=0.0, le=1.0)
    # tensor2tensor's name: it weights the *hard* term, so weight = 1 - task_balance.
    task_balance: float | None = Field(default=None, ge=0.0, le=1.0)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    temperature: float = Field(default=1.0, gt=0.0)
    share_embeddings: bool = False
    # sync: teacher and student also use one encoder module (din / self_attention) per sequence feature
    share_sequence_encoder: bool = False
    separate_embeddings: list[str] = Field(default_factory=list)
    teacher_checkpoint: str | None = None
    soft_label: str | None = None
    # async: K teachers, each on K−1 folds of the training split, give every training row the soft
    # label of the teacher that did not see it (README, "Out-of-fold soft labels"); None or 1: off.
    cross_fit: int | None = Field(default=None, ge=1)
    # Ranking distillation within the groups of task.group (training/ranking.py): the term L_d is
    # made of; `loss_weights` mixes several ({pointwise: 1.0, listwise: 0.5}); default {loss: 1}.
    loss: Literal["pointwise", "pairwise", "listwise"] = "pointwise"
    loss_weights: dict[Literal["pointwise", "pairwise", "listwise"], float] | None = None
    max_pairs: int | None = Field(default=None, gt=0)  # pairwise: pairs drawn per batch (default all)
    max_group_rows: int | None = Field(default=None, gt=0)  # grouped batches: a larger group is cut into chunks
    # which batches the within-group term sees: `whole` (data/loader.py GroupedLoader: whole groups per
    # batch) or `in_batch` (the ordinary shuffled batches, as pointwise; the term is taken over the rows of
    # each group that happen to share a batch, groups of one adding nothing)
    group_batches: Literal["whole", "in_batch"] = "whole"
    # the within-group losses' group column when it is not task.group (e.g. GAUC per user, lists per
    # request); None: task.group. Read from the training split only.
    group: str | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _check_loss_weights(self) -> "DistillationConfig":
        w = self.loss_weights
        if w is not None:
            if self.loss not in w:
                raise ValueError(f"loss_weights must include distillation.loss ('{self.loss}')")
            if any(v < 0 for v in w.values()) or not any(v > 0 for v in w.values()):
                raise ValueError("loss_weights: weights must be >= 0 and one of them > 0")
        return self
    soft_labels: list[str] | None = None  # offline with several teachers: one score column each
    ensemble: EnsembleConfig = Field(default_factory=EnsembleConfig)
    hint: HintConfig | None = None

    @model_validator(mode="after")
    def _resolve_weight(self) -> "DistillationConfig":
        if self.weight is not None and self.task_balance is not None:
            raise ValueError("set either 'weight' (λ, the distillation term) or 'task_balance' (1 − λ), not both")
        if self.task_balance is not None:
            object.__setattr__(self, "weight", 1.0 - self.task_balance)
            object.__setattr__(self, "task_balance", None)
        if self.weight is None:
            object.__setattr__(self, "weight", 0.5)
        return self


class EarlyStoppingConfig(Strict):
    metric: str | None = None  # default: auc (binary), accuracy (multiclass), rmse (regression)
    patience: int = Field(default=2, ge=1)


class TrainConfig(Strict):
    epochs: int = Field(default=2, ge=1)
    batch_size: int = Field(default=1024, gt=0)
    optimizer: Literal["adam", "adamw", "sgd", "adagrad", "rmsprop"] = "adam"
    lr: float = Field(default=1e-3, gt=0.0)
    weight_decay: float = Field(default=0.0, ge=0.0)
    # Row-wise embedding updates: tables get sparse gradients and SparseAdam (lazy Adam) updates only
    # the rows a batch touched, so a step costs in proportion to those rows, not to the table size.
    sparse_embeddings: bool = False
    seed: int = 0
    eval_every: int | None = Field(default=None, gt=0)  # steps; default once per epoch
    early_stopping: EarlyStoppingConfig | None = Field(default_factory=EarlyStoppingConfig)
    baseline: bool = True  # also train the student alone, so the run says what distillation gained
    log_every: int = Field(default=1, gt=0)
    checkpoint_every: int | None = Field(default=None, gt=0)  # steps; resumable checkpoints
    deterministic: bool = False  # torch.use_deterministic_algorithms
    threads: int | None = Field(default=None, gt=0)
    # bf16: mixed precision, the models' matrix products in bfloat16 under torch.autocast (about 2.4x
    # the float32 matmul rate on CPUs with AVX512-BF16 or AMX); weights, optimizer state, losses,
    # evaluation and the exported student stay float32.
    # auto: bf16 where the device multiplies it natively (CUDA with bf16, CPUs with AVX512-BF16 or
    # AMX), fp32 elsewhere; fp16: CUDA only, with a gradient scaler. The default stays fp32: bf16
    # changes every result, and on an AVX2-only CPU it ran 12x slower (README, "Training on a GPU").
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "fp32"
    # auto: the GPU when torch sees one (cuda:$LOCAL_RANK under torchrun), else the CPU
    device: str = Field(default="auto", pattern=r"^(auto|cpu|cuda|cuda:\d+)$")
    tf32: bool = False  # float32 matrix products in TensorFloat-32 on CUDA (opt-in: 10-bit mantissa)
    # Where the packed training split lives when training on a GPU (README, "Training on a GPU"): auto
    # copies it to the device once when it takes at most device_memory_share of the GPU's free memory
    # (batches are then gathered there), else each batch is gathered on the host into pinned buffers
    # and copied one batch ahead; always / never force one or the other. No effect on a CPU.
    data_on_device: Literal["auto", "always", "never"] = "auto"
    device_memory_share: float = Field(default=0.5, gt=0.0, le=1.0)


def default_teacher() -> ModelConfig:
    return ModelConfig(model="dnn", hidden=[512, 256, 128])


Range = tuple[float, float]


class TuneConfig(Strict):
    """`distill tune`'s search space (README, "Tuning: distill tune"). A range is [low, high]
    (inclusive); a list is the choices; None keeps the config's own value fixed in every trial."""

    # async: one teacher trained and its logits cached, each trial a student's training; sync also
    # trains a teacher per trial (a teacher's cost), so it is searched only when listed here
    modes: list[Literal["async", "sync"]] = Field(default_factory=lambda: ["async"], min_length=1)
    weight: Range = (0.0, 0.95)  # λ
    temperature: Range | None = (1.0, 8.0)  # searched on a log scale
    schedules: list[Literal["constant", "delayed", "linear", "cosine"]] = Field(
        default_factory=lambda: ["constant", "delayed", "linear"], min_length=1)
    schedule_steps: tuple[int, int] | None = None  # k of delayed/linear/cosine; None: 0 .. half the training's steps
    lr: Range | None = None  # the student's train.lr, on a log scale; None: train.lr in every trial
    epochs: tuple[int, int] | None = None  # None: train.epochs in every trial
    pruning: bool = True  # stop a trial whose validation metric trails the median of earlier ones at that evaluation

    @field_validator("weight", "temperature", "schedule_steps", "lr", "epochs")
    @classmethod
    def _ordered(cls, v: Any) -> Any:
        if v is not None and v[0] > v[1]:
            raise ValueError(f"[low, high] with low ≤ high, got {list(v)}")
        return v


class Config(Strict):
    data: DataConfig
    task: TaskConfig
    features: list[FeatureConfig]
    teacher: ModelConfig = Field(default_factory=lambda: default_teacher())
    # several teachers by name (README, "Several teachers"); `teacher` is the one-teacher shorthand
    teachers: dict[str, ModelConfig] | None = None
    student: ModelConfig = Field(default_factory=ModelConfig)
    distillation: DistillationConfig = Field(default_factory=DistillationConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    output: str = "runs/example"
    tune: TuneConfig | None = None  # read by `distill tune` only; None: its defaults

    @model_validator(mode="after")
    def _check_features(self) -> "Config":
        seen: set[str] = set()
        for f in self.features:
            if f.name in seen:
                raise ValueError(f"feature '{f.name}' is listed twice")
            seen.add(f.name)
            if f.name in (self.task.label, self.task.weight):
                raise ValueError(f"feature '{f.name}' is also the task's label or weight column")
        if not self.features:
            raise ValueError("at least one feature is needed")
        if self.teachers is not None:
            # the resolved config (config.yaml) carries the default `teacher` section: that one is no clash
            if "teacher" in self.model_fields_set and self.teacher != default_teacher():
                raise ValueError("set either 'teacher' (one teacher) or 'teachers' (several, by name), not both")
            if len(self.teachers) < 2:
                raise ValueError("teachers: name at least two teachers (one teacher is the 'teacher' section)")
            for n in self.teachers:
                if not n.replace("_", "").replace("-", "").isalnum():
                    raise ValueError(f"teachers: the name '{n}' must be letters, digits, '_' or '-' (it names a file)")
        _check_sequences(self.features)
        if self.distillation.share_sequence_encoder and not self.distillation.share_embeddings:
            raise ValueError("distillation.share_sequence_encoder: needs distillation.share_embeddings: true "
                             "(an encoder shared over two models' separate tables would read different vectors)")
        if not any(not f.privileged for f in self.features):
            raise ValueError("every feature is privileged: the student would have nothing to serve on")
        return self


def _check_sequences(features: list[FeatureConfig]) -> None:
    """`shares` and `encoder` belong to sequence features; `shares` names a categorical one."""
    by_name = {f.name: f for f in features}
    for f in features:
        where = f"feature '{f.name}'"
        if f.type != "sequence":
            for key in ("shares", "encoder", "side_of"):
                if getattr(f, key) is not None:
                    raise ValueError(f"{where}: '{key}' applies to type 'sequence' only (this one is {f.type})")
            continue
        if f.shares is not None:
            target = by_name.get(f.shares)
            if target is None or target.type != "categorical":
                cats = [g.name for g in features if g.type == "categorical"]
                raise ValueError(f"{where}: shares '{f.shares}', which is not a categorical feature of this config "
                                 f"(categorical features: {', '.join(cats) or 'none'})")
            if f.hash_buckets is not None:
                raise ValueError(f"{where}: set either 'shares' (the ids of '{f.shares}') or 'hash_buckets', not both")
        if f.side_of is not None:
            main = by_name.get(f.side_of)
            if main is None or main.type != "sequence" or main.side_of is not None:
                raise ValueError(f"{where}: side_of '{f.side_of}', which is not a sequence feature of this config "
                                 f"(a side channel runs beside a sequence, id by id)")
            if f.encoder is not None:
                raise ValueError(f"{where}: a side channel has no encoder of its own (it is added to '{f.side_of}' before its encoder)")
            if f.max_len != main.max_len or f.privileged != main.privileged:
                raise ValueError(f"{where}: a side channel needs the max_len and privileged of '{f.side_of}' "
                                 f"({main.max_len}, {main.privileged}), not ({f.max_len}, {f.privileged})")
        if f.encoder == "din" and f.shares is None:
            raise ValueError(f"{where}: encoder 'din' attends with the candidate item as its query: "
                             f"name the candidate's categorical feature with 'shares'")


# ----------------------------------------------------------------------------- loading and errors


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> Config:
    """Read a YAML config; `overrides` maps dotted keys (``"train.epochs"``) to values."""
    path = Path(path)
    if not path.is_file():
        raise DistillError(f"{path}: config file not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise DistillError(f"{path}: not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise DistillError(f"{path}: expected a mapping of sections (data, task, features, ...)")
    for key, value in (overrides or {}).items():
        set_dotted(raw, key, value)
    return config_from_dict(raw, source=str(path))


def require_config(cfg: Any, name: str = "cfg") -> None:
    """The Python API's first check: a path or a dict where a Config belongs is a TypeError that says
    how to make one, not an AttributeError from deep inside."""
    if not isinstance(cfg, Config):
        how = ("distill.load_config(path)" if isinstance(cfg, (str, Path))
               else "distill.config_from_dict(raw)" if isinstance(cfg, dict) else None)
        hint = f": load it first with {how}" if how else ""
        raise TypeError(f"{name}: expected a distill Config, not {type(cfg).__name__}{hint}")


def config_from_dict(raw: dict[str, Any], source: str = "config") -> Config:
    try:
        return Config.model_validate(raw)
    except ValidationError as e:
        raise DistillError(f"{source}: {explain(e, raw)}") from None


def set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    node = raw
    parts = key.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value


def explain(error: ValidationError, raw: dict[str, Any]) -> str:
    """The first pydantic error as one line: the dotted key, what is wrong, and a suggestion."""
    err = error.errors()[0]
    loc = err["loc"]
    key = _dotted(loc, raw)
    if err["type"] == "extra_forbidden":
        valid = _fields_at(loc[:-1])
        close = closest(str(loc[-1]), valid)
        hint = f" (did you mean '{close[0]}'?)" if close else f" (valid keys: {', '.join(valid)})"
        return f"unknown key '{key}'{hint}"
    if err["type"] == "missing":
        return f"missing key '{key}'"
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "literal_error" and isinstance(err.get("input"), str):
        # a misspelt choice ('encoder: dinn') gets the same suggestion as a misspelt key
        choices = re.findall(r"'([^']*)'", str((err.get("ctx") or {}).get("expected", "")))
        close = difflib.get_close_matches(err["input"], choices, n=1, cutoff=0.5)
        msg += f" (did you mean '{close[0]}'?)" if close else ""
    return f"{key}: {msg}" if key else msg


def closest(word: str, valid: list[str]) -> list[str]:
    """The valid key a misspelt one most likely meant ('epocs' → 'epochs', 'lr_rate' → 'lr')."""
    close = difflib.get_close_matches(word, valid, n=1, cutoff=0.5)
    if not close:
        close = sorted((v for v in valid if word.startswith(v) or v.startswith(word)), key=len, reverse=True)[:1]
    return close


def _dotted(loc: tuple, raw: dict[str, Any]) -> str:
    """features.2.name reads better as features[2] (name 'price').name."""
    out: list[str] = []
    node: Any = raw
    for part in loc:
        if isinstance(part, int):
            name = node[part].get("name") if isinstance(node, list) and isinstance(node[part], dict) else None
            out[-1] += f"[{part}]" + (f" ('{name}')" if name else "")
        elif part in ("function-after", "function-before") or str(part).startswith("function"):
            continue
        else:
            out.append(str(part))
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            node = None
    return ".".join(out)


def _fields_at(loc: tuple) -> list[str]:
    model: type[BaseModel] = Config
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(str(part))
        if field is None:
            return []
        ann = field.annotation
        inner = _model_in(ann)
        if inner is None:
            return []
        model = inner
    return list(model.model_fields)


def _model_in(ann: Any) -> type[BaseModel] | None:
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    for arg in getattr(ann, "__args__", ()) or ():
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
