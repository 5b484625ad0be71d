"""Export the student alone: its graph (ONNX or TorchScript) on the encoded serving features, the
serving encoders, and a manifest. Nothing of the teacher and no privileged feature goes in.

Export directory (written under `<out>.partial` and renamed when complete and leak-checked):
    model.onnx | model.pt   the student and its output transform (sigmoid / softmax / label scale);
                            one input per serving feature, named by the feature:
                            categorical int64 (B,), numeric float32 (B, 2), multi_categorical int64 (B, L),
                            sequence int64 (B, L) (most recent first; 0 is padding, so ids != 0 is the mask)
    encoders.json           the serving features' encoders and the label encoder (no privileged one)
    manifest.json           serving schema, task, metrics of the run, versions, sha256 of the files,
                            the leak check's report
    user_tower.onnx,        with `towers=True` (a two_tower student, ONNX): each tower on its own
    item_tower.onnx         serving features, returning vectors whose inner product is the logit;
                            described in the manifest's "towers" (serving/towers.py)

    >>> export("runs/demo", "onnx", "runs/demo/export-onnx")     # doctest: +SKIP
"""
from __future__ import annotations

import copy
import io
import json
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn

from distill.data.batch import Batch
from distill import outputs
from distill.data.encoders import Encoders, LabelEncoder
from distill.data.kinds import KINDS
from distill.errors import DistillError
from distill.run import Run, load_run, versions
from distill.serving.manifest import FORMATS, INPUT_NAMES, output_names, serving_role, sha256  # noqa: F401  (re-exported)

OPSET = 17


class ServingGraph(nn.Module):
    """The student plus the transform from logits to what a user reads, taking one tensor per
    serving feature (positional, in schema order) so that the exported graph's inputs *are* the
    serving schema."""

    def __init__(self, model: nn.Module, names: list[str], label: LabelEncoder):
        super().__init__()
        self.model = model
        self.names = list(names)
        self.task = label.task
        self.mean, self.std = float(label.mean), float(label.std)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        logits = self.model(Batch(dict(zip(self.names, inputs))))
        if self.task == "binary":
            return torch.sigmoid(logits)  # (B,)
        if self.task == "multiclass":
            return torch.softmax(logits, dim=-1)  # (B, C)
        return logits * self.std + self.mean  # (B,) on the label's scale


def example_inputs(encoders: Encoders, names: list[str], rows: int = 3, bag: int = 2) -> tuple[torch.Tensor, ...]:
    """Tensors shaped like an encoded batch, to trace the graph with (values are irrelevant)."""
    out = []
    for n in names:
        kind = KINDS[encoders.features[n].kind]
        shape = (rows, *(bag if isinstance(s, str) else s for s in kind.row_shape))
        # ids 1 (the OOV bucket: a row of any table), values 0
        out.append(torch.full(shape, 1 if kind.dtype == "int64" else 0, dtype=getattr(torch, kind.dtype)))
    return tuple(out)


def write_graph(graph: ServingGraph, example: tuple[torch.Tensor, ...], kinds: list[str], fmt: str, path: Path) -> None:
    graph.eval()
    # The tracer warns about Python branches on sizes that are fixed for a model (out_dim, how many
    # numeric features) and about the TorchScript-based tools being legacy; both are expected here.
    with warnings.catch_warnings(), torch.no_grad():
        for category in (torch.jit.TracerWarning, DeprecationWarning, FutureWarning):
            warnings.simplefilter("ignore", category)
        try:
            if fmt == "onnx":
                # The TorchScript-based exporter (dynamo=False): the graph has no data-dependent
                # control flow, only a dynamic batch and bag length, and it needs no onnxscript.
                axes = {n: {0: "batch", **{a: f"{n}_len" for a in KINDS[k].varying_axes}} for n, k in zip(graph.names, kinds)}
                buf = io.BytesIO()
                torch.onnx.export(graph, example, buf, dynamo=False, input_names=graph.names, output_names=["output"],
                                  dynamic_axes={**axes, "output": {0: "batch"}}, opset_version=OPSET)
                path.write_bytes(buf.getvalue())
            else:
                # TorchScript keeps no argument names, so the archive carries them, in order
                names = json.dumps(graph.names).encode()
                torch.jit.save(torch.jit.trace(graph, example), str(path), _extra_files={INPUT_NAMES: names})
        except Exception as e:  # a user's own model may use an op the exporter does not know
            if outputs.no_space(e):
                raise  # not the model's fault: export() says so in one line
            raise DistillError(f"cannot export the student to {fmt}: {str(e).strip().splitlines()[0]}") from None


def cpu_float32(model: nn.Module) -> nn.Module:
    """`model` itself when it is a float32 CPU model, else a float32 CPU copy: the export's example
    inputs are CPU tensors and the served graph is float32, whatever it was trained on."""
    if all(p.device.type == "cpu" and p.dtype == torch.float32 for p in model.parameters()):
        return model
    return copy.deepcopy(model).to("cpu", torch.float32)


def export(run: str | Path | Run, fmt: str = "onnx", out: str | Path | None = None, overwrite: bool = True,
           check: bool = True, towers: bool = False) -> Path:
    """Export the run's serving model to `out` (default `<run>/export-<fmt>`); returns the directory.

    With `towers` a two_tower student's user and item towers are exported too (ONNX only), each
    leak-checked on its own.

    With `check` (the default) the leak check runs on the written files before they are published;
    a failure raises DistillError and leaves nothing behind.
    """
    if fmt not in FORMATS:
        from distill.config import closest  # a misspelt format gets the suggestion a misspelt config choice gets
        hint = "".join(f" (did you mean '{c}'?)" for c in closest(str(fmt), list(FORMATS)))
        raise DistillError(f"--format: '{fmt}' is not one of {', '.join(FORMATS)}{hint}")
    if towers and fmt != "onnx":
        raise DistillError(f"--towers: the tower graphs are ONNX; use --format onnx, not {fmt}")
    if not isinstance(run, Run):  # the serving model alone: a teacher's `module:` factory is never imported
        run = load_run(run, roles=("student",) if (Path(run) / "student.safetensors").is_file() else ("baseline",))
    role = serving_role(run)
    if role not in run.models:
        raise DistillError(f"{run.path}: the run holds no student or baseline checkpoint to export")
    out = Path(out) if out is not None else run.path / f"export-{fmt}"
    # only an export distill wrote is replaced, never the run itself nor a directory holding it
    partial = outputs.start(out, "export", replace=overwrite, protect=(run.path,))
    names = run.features[role]
    if towers:
        from distill.serving.towers import tower_features
        tower_features(run.models[role], names)  # not a two_tower student: refused before anything is written
    try:
        serving_encoders = Encoders({n: run.encoders.features[n] for n in names}, run.encoders.label)
        serving_encoders.save(partial / "encoders.json")
        graph = ServingGraph(cpu_float32(run.models[role]), names, run.encoders.label)
        kinds = [run.encoders.features[n].kind for n in names]
        write_graph(graph, example_inputs(run.encoders, names), kinds, fmt, partial / FORMATS[fmt])
        manifest = _manifest(run, role, names, fmt, partial)
        if towers:
            manifest["towers"] = write_towers(run.models[role], names, run.encoders, partial)
            manifest["sha256"].update({t["file"]: sha256(partial / t["file"]) for t in manifest["towers"].values()})
        (partial / "manifest.json").write_text(json.dumps(manifest, indent=2))
        if check:
            from distill.serving.leakcheck import leak_check
            report = leak_check(run, partial)
            if not report.passed:
                raise DistillError(f"leak check failed, nothing exported: {report.failure}")
            manifest["leak_check"] = report.to_dict()
            if towers:
                from distill.serving.leakcheck import tower_leak_check
                for side, rep in tower_leak_check(run, partial).items():
                    if not rep.passed:
                        raise DistillError(f"leak check of the {side} tower failed, nothing exported: {rep.failure}")
                    manifest["towers"][side]["leak_check"] = rep.to_dict()
            (partial / "manifest.json").write_text(json.dumps(manifest, indent=2))
        outputs.swap(partial, out)
    except BaseException as e:
        outputs.discard(partial)
        if outputs.no_space(e):
            raise DistillError(f"{out}: no space left on device while writing the export; nothing was written") from None
        raise
    return out


def write_towers(model: nn.Module, names: list[str], encoders: Encoders, d: Path) -> dict[str, Any]:
    """Write a two-tower student's user and item graphs into `d`; the manifest's "towers" entry."""
    from distill.serving.towers import FILES, SIDES, TowerGraph, tower_features
    feats = tower_features(model, names)
    out: dict[str, Any] = {}
    for side in SIDES:
        graph = TowerGraph(model, side, feats[side])
        example = example_inputs(encoders, feats[side])
        write_graph(graph, example, [encoders.features[n].kind for n in feats[side]], "onnx", d / FILES[side])  # type: ignore[arg-type]
        with torch.no_grad():
            dim = int(graph.eval()(*example).shape[1])
        out[side] = {"file": FILES[side], "inputs": feats[side], "dim": dim}
    return out


def _manifest(run: Run, role: str, names: list[str], fmt: str, d: Path) -> dict[str, Any]:
    # privileged ones too: a model that reads one must reach the leak check, which refuses it
    by_name = {f["name"]: f for f in run.schema["serving"] + run.schema["privileged"]}
    serving = []
    for n in names:
        serving.append({**by_name[n], "input": KINDS[by_name[n]["type"]].graph_input()})
    model = run.models[role]
    vers = versions()
    if fmt == "onnx":
        import onnx
        import onnxruntime
        vers.update(onnx=onnx.__version__, onnxruntime=onnxruntime.__version__)
    checkpoint = run.path / f"{role}.safetensors"
    return {
        "format": fmt,
        "file": FORMATS[fmt],
        "role": role,
        "model": run.config.student.model,
        "task": run.schema["task"],
        "classes": run.encoders.label.classes,
        "outputs": output_names(run.encoders.label),
        "serving": serving,
        # names only, so the service can say "privileged" rather than "unknown" when one is sent
        "privileged": [f["name"] for f in run.schema["privileged"]],
        "parameters": sum(p.numel() for p in {id(p): p for p in model.parameters()}.values()),
        "metrics": run.metrics,
        "versions": vers,
        "sha256": {FORMATS[fmt]: sha256(d / FORMATS[fmt]), "encoders.json": sha256(d / "encoders.json"),
                   f"source:{checkpoint.name}": sha256(checkpoint) if checkpoint.is_file() else None},
        "source_run": str(run.path.resolve()),
        "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
