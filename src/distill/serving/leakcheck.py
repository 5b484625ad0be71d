"""The leak check: proof that an export serves on serving features alone and matches PyTorch.

1. inputs    the graph's inputs are exactly the serving schema (names, order, types), and the
             graph holds exactly the student's parameters (no teacher weights came along);
2. isolation changing every privileged column of a batch leaves the predictions bit-identical,
             both from the export and from the PyTorch student;
3. agreement the export (ONNX Runtime or TorchScript) and the PyTorch student agree within 1e-5.

It runs at export (on synthetic rows drawn from the encoders, so no training data is needed) and
in the tests (on real rows).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from distill.data.kinds import KINDS, FeatureEncoder
from distill.run import Run
from distill.serving.exported import ExportedModel
from distill.serving.manifest import serving_role

TOLERANCE = 1e-5


@dataclass
class LeakReport:
    checks: list[dict[str, Any]] = field(default_factory=list)

    def add(self, name: str, passed: bool, detail: str) -> None:
        self.checks.append({"check": name, "passed": bool(passed), "detail": detail})

    @property
    def passed(self) -> bool:
        return all(c["passed"] for c in self.checks)

    @property
    def failure(self) -> str | None:
        bad = [c for c in self.checks if not c["passed"]]
        return f"{bad[0]['check']}: {bad[0]['detail']}" if bad else None

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "tolerance": TOLERANCE, "checks": self.checks}


def sample_column(enc: FeatureEncoder, n: int, rng: np.random.Generator) -> pa.Array:
    """`n` plausible values of one feature, with some unseen categories and some nulls, so the
    out-of-vocabulary and missing paths are exercised too."""
    null = rng.random(n) < 0.05
    return KINDS[enc.kind].sample(enc, null, rng)


def sample_table(run: Run, n: int = 256, seed: int = 0) -> pa.Table:
    """Synthetic rows with every feature of the schema, serving and privileged."""
    rng = np.random.default_rng(seed)
    names = [f["name"] for f in run.schema["serving"] + run.schema["privileged"]]
    columns = {name: sample_column(run.encoders.features[name], n, rng) for name in names}
    from distill.data.kinds.sequence import sample_side
    for name in names:  # a sequence's side channel: one value per sampled item (data/kinds/sequence.py)
        enc = run.encoders.features[name]
        main = getattr(enc, "side_of", None)
        if main in columns:
            columns[name] = sample_side(enc, columns[main], run.encoders.features[main].separator, rng)
    return pa.table(columns)


def perturb_privileged(run: Run, table: pa.Table, seed: int = 1) -> pa.Table:
    """`table` with every privileged column replaced by different values (added if absent)."""
    rng = np.random.default_rng(seed)
    out = table
    for f in run.schema["privileged"]:
        col = sample_column(run.encoders.features[f["name"]], table.num_rows, rng)
        if f["name"] in out.column_names:
            out = out.set_column(out.column_names.index(f["name"]), f["name"], col)
        else:
            out = out.append_column(f["name"], col)
    return out


def leak_check(run: Run, export_dir: str | Path, table: pa.Table | None = None) -> LeakReport:
    """Run the three checks on an export of `run`; `table` defaults to synthetic rows."""
    model = ExportedModel(export_dir, trust_torchscript=True)  # the file export() has just written
    role = serving_role(run)
    names = run.features[role]
    privileged = [f["name"] for f in run.schema["privileged"]]
    report = LeakReport()

    # 1. the inputs are the serving schema, and the weights are the student's
    kinds = {f["name"]: f["type"] for f in run.schema["serving"]}
    problems = []
    if model.graph_inputs != names:
        problems.append(f"graph inputs {model.graph_inputs} are not the serving features {names}")
    problems += [f"'{n}' is privileged" for n in model.graph_inputs if n in privileged]
    if model.format == "onnx":
        for spec in model.input_spec():
            kind = KINDS[kinds.get(spec["name"], "categorical")]
            want_type, want_rank = kind.onnx_type, 1 + len(kind.row_shape)
            if spec["type"] != want_type or len(spec["shape"]) != want_rank:
                problems.append(f"input '{spec['name']}' is {spec['type']} of rank {len(spec['shape'])}, expected {want_type} of rank {want_rank}")
    student_params = sum(p.numel() for p in {id(p): p for p in run.models[role].parameters()}.values())
    graph_params = _graph_parameters(model)
    if graph_params != student_params:
        problems.append(f"the graph holds {graph_params:,} weights, the {role} has {student_params:,}")
    report.add("inputs", not problems, "; ".join(problems) or
               f"{len(names)} inputs = the serving schema; {graph_params:,} weights = the {role}'s parameters")

    # 2. privileged columns do not move a single bit; 3. the export computes what PyTorch computes
    table = table if table is not None else sample_table(run)
    try:
        _isolation(report, model, run, role, privileged, table)
        diff = float(np.max(np.abs(model.predict(table) - run.predict(table, role)), initial=0.0))
        report.add("agreement", diff <= TOLERANCE, f"max |{model.format} − PyTorch| = {diff:.2e} on {table.num_rows} rows")
    except Exception as e:  # an export that cannot even run on serving features fails the check
        report.add("runs", False, f"predicting on serving features failed: {str(e).strip().splitlines()[0]}")
    return report


def _isolation(report: LeakReport, model: ExportedModel, run: Run, role: str, privileged: list[str], table: pa.Table) -> None:
    if not privileged:
        report.add("isolation", True, "the schema declares no privileged feature")
        return
    base = perturb_privileged(run, table, seed=1)
    changed = perturb_privileged(run, table, seed=2)
    same_export = np.array_equal(model.predict(base), model.predict(changed))
    same_torch = np.array_equal(run.predict(base, role), run.predict(changed, role))
    report.add("isolation", same_export and same_torch,
               f"changing {', '.join(privileged)} on {table.num_rows} rows: export "
               f"{'identical' if same_export else 'CHANGED'}, PyTorch {'identical' if same_torch else 'CHANGED'}")


def _graph_parameters(model: ExportedModel) -> int:
    if model.format == "onnx":
        import onnx
        graph = onnx.load(str(model.directory / model.manifest["file"])).graph
        # weights are the float initializers; int64 ones are shape constants the exporter adds
        return sum(int(np.prod(t.dims)) for t in graph.initializer if t.data_type == onnx.TensorProto.FLOAT)
    return sum(p.numel() for p in model._module.parameters())


def tower_leak_check(run: Run, export_dir: str | Path, table: pa.Table | None = None) -> dict[str, LeakReport]:
    """The leak check on each tower graph of an export (`--towers`): its inputs are exactly its own
    serving features (no privileged one, none of the other tower's); changing the privileged columns
    and the other tower's columns leaves its vectors bit-identical; it agrees with PyTorch within
    1e-5; and ⟨user vector, item vector⟩ equals the PyTorch student's logit within 1e-5."""
    from distill.inference import predict_logits
    from distill.serving.towers import run_vectors, tower_features
    model = ExportedModel(export_dir)
    role = serving_role(run)
    feats = tower_features(run.models[role], run.features[role])
    privileged = [f["name"] for f in run.schema["privileged"]]
    table = table if table is not None else sample_table(run)
    reports: dict[str, LeakReport] = {}
    vectors: dict[str, np.ndarray] = {}
    for side, other in (("user", "item"), ("item", "user")):
        report = reports[side] = LeakReport()
        spec = model.towers[side]
        got = [i.name for i in spec["session"].get_inputs()]
        problems = [] if got == feats[side] else [f"graph inputs {got} are not the {side} tower's features {feats[side]}"]
        problems += [f"'{n}' is privileged" for n in got if n in privileged]
        problems += [f"'{n}' belongs to the {other} tower" for n in got if n in feats[other]]
        report.add("inputs", not problems, "; ".join(problems) or f"{len(got)} inputs = the {side} tower's serving features")
        try:
            vectors[side] = model.vectors(side, table)
            # every column the tower must not read, changed: privileged ones and the other tower's
            changed = perturb_privileged(run, table, seed=2)
            for n in feats[other]:
                col = sample_column(run.encoders.features[n], table.num_rows, np.random.default_rng(3))
                changed = changed.set_column(changed.column_names.index(n), n, col)
            same_export = np.array_equal(model.vectors(side, changed), vectors[side])
            same_torch = np.array_equal(run_vectors(run, role, side, changed), run_vectors(run, role, side, table))
            report.add("isolation", same_export and same_torch,
                       f"changing the privileged and the {other} tower's columns on {table.num_rows} rows: export "
                       f"{'identical' if same_export else 'CHANGED'}, PyTorch {'identical' if same_torch else 'CHANGED'}")
            diff = float(np.max(np.abs(vectors[side] - run_vectors(run, role, side, table)), initial=0.0))
            report.add("agreement", diff <= TOLERANCE, f"max |onnx − PyTorch| = {diff:.2e} on {table.num_rows} rows")
        except Exception as e:
            report.add("runs", False, f"the {side} tower failed on serving features: {str(e).strip().splitlines()[0]}")
    if len(vectors) == 2:
        enc = run.encoders.encode(run.config, table, "leak check", features=run.features[role], label=False)
        logits = predict_logits(run.models[role], enc, run.features[role]).numpy()
        diff = float(np.max(np.abs((vectors["user"] * vectors["item"]).sum(1) - logits), initial=0.0))
        for report in reports.values():
            report.add("inner product", diff <= TOLERANCE,
                       f"max |⟨user, item⟩ − the student's logit| = {diff:.2e} on {table.num_rows} rows")
    return reports
