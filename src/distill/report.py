"""`distill report RUN`: what a run (or a `compare` directory) did, as a page a person can read.

Writes RUN/report/ (built under report.partial/ and swapped in whole):
    report.md       the tables and the plots, linked
    report.html     the same, self-contained (PNGs embedded), to open in a browser or attach
    losses.png      loss terms over steps, one panel per phase
    lambda.png      λ and the learning rate over steps
    validation.png  the stopping metric on the validation split: teacher, student, baseline
    calibration.png predicted vs observed by bins on the test (or valid) split

For a compare directory (compare.json beside seed_* runs) the curves come from the first seed's
run and the gain table from compare.json.

    >>> report = write_report("runs/demo/compare")          # doctest: +SKIP
    >>> report.html, [s.label for s in report.figures["validation"]]
"""
from __future__ import annotations

import base64
import html
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from distill import diagnostics, outputs, plots, results
from distill.errors import DistillError
from distill.metrics import HIGHER_IS_BETTER


CALIBRATION_ROWS = 200_000


@dataclass
class Report:
    directory: Path
    markdown: Path
    html: Path
    figures: dict[str, list[plots.Series]] = field(default_factory=dict)  # name -> the series drawn
    notes: list[str] = field(default_factory=list)  # what was left out, and why


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    out = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                raise DistillError(f"{path}: line {i} is not JSON (the file is corrupt)") from None
    return out


def locate(path: Path) -> tuple[Path, dict[str, Any] | None]:
    """(the run whose curves to draw, compare.json's summary or None)."""
    if (path / "compare.json").is_file():
        seeds = sorted((p for p in path.glob("seed_*") if (p / "encoders.json").is_file()),
                       key=lambda p: int(p.name.removeprefix("seed_")) if p.name.removeprefix("seed_").lstrip("-").isdigit() else 0)
        if not seeds:
            raise DistillError(f"{path}: compare.json is there but no seed_* run directory")
        return seeds[0], json.loads((path / "compare.json").read_text())
    if (path / "encoders.json").is_file():
        return path, None
    raise DistillError(f"{path}: neither a run directory (no encoders.json) nor a compare directory (no compare.json)")


def write_report(path: str | Path, output: str | Path | None = None) -> Report:
    """Build the report of a run or compare directory into `output` (default: PATH/report)."""
    path = Path(path)
    if not path.is_dir():
        raise DistillError(f"{path}: no such directory")
    run_dir, summary = locate(path)
    output = Path(output) if output else path / "report"
    # RUN/report is fine; RUN itself (or a directory holding it) is not, nor anything distill did not write
    partial = outputs.start(output, "report", replace=True, protect=(path, run_dir))
    try:
        report = _build(path, run_dir, summary, partial)
        outputs.swap(partial, output)  # a reader sees the old report or the new, never half
    except BaseException as e:
        outputs.discard(partial)
        if outputs.no_space(e):
            raise DistillError(f"{output}: no space left on device while writing the report; nothing was written") from None
        raise
    report.directory, report.markdown, report.html = output, output / "report.md", output / "report.html"
    return report


# ----------------------------------------------------------------------------- content


def _build(path: Path, run_dir: Path, summary: dict | None, out: Path) -> Report:
    from distill.run import load_run
    from distill.training.common import stopping_metric

    run = load_run(run_dir)
    cfg = run.config
    info = json.loads((run_dir / "run.json").read_text()) if (run_dir / "run.json").is_file() else {}
    steps, evals = read_jsonl(run_dir / "steps.jsonl"), read_jsonl(run_dir / "evals.jsonl")
    metric, _ = stopping_metric(cfg)
    report = Report(out, out / "report.md", out / "report.html")
    doc = Doc()

    full = path.resolve()
    name = f"{full.parent.name}/{full.name}" if full.parent.name else full.name  # runs/demo/compare → demo/compare
    doc.h1(f"distill report: {name}")
    doc.p(f"`{full}`, written {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}."
          + (f" Curves and calibration: the run `{run_dir.name}` (first seed); tables: all seeds." if summary else ""))
    doc.p(_setup(run, info))
    for w in info.get("warnings", []):
        doc.p(f"Warning: {w}")

    if summary:
        doc.h2(f"Gain over {summary['seeds']} seed(s), {summary['split']} split")
        v = summary.get("verdict") or {}
        if v.get("headline"):
            doc.p(f"**Verdict** — {v['headline']}")
        header, rows = results.summary_rows(summary)
        doc.table(header, rows)
        for line in results.notes(v, header[1:]):
            doc.p(line)
        if summary.get("retrieval"):  # compare --retrieval: the two-tower student as a retriever
            from distill.retrieval import retrieval_note, retrieval_tables
            doc.h2("Retrieval: distilled vs baseline two-tower student")
            for caption, header, rows in retrieval_tables(summary["retrieval"]):
                doc.p(caption)
                doc.table(header, rows)
            doc.p(retrieval_note(summary["retrieval"]))
    if run.metrics:
        doc.h2("Metrics of this run" if not summary else f"Metrics of {run_dir.name}")
        # one run: its verdict from the paired bootstrap over its test rows (a compare has its own above)
        verdict = {} if summary else results.run_verdict(run_dir, run.metrics, results.primary_metric(cfg), cfg.task.type)
        if verdict.get("headline"):
            doc.p(f"**Verdict** — {verdict['headline']}")
        doc.table(*results.metric_rows(run.metrics))
        if verdict:
            doc.p(results.notes(verdict, list(verdict["metrics"]))[0])
            for m, why in verdict["left_out"].items():
                _note(doc, report, f"{m} left out of the verdict: {why}")
    diagnostics.report_section(doc, path)  # why distillation did or did not pay

    _figure(doc, report, "Loss terms", "losses", plots.plot_losses(steps, out / "losses.png"), "loss terms over steps",
            "Faint: every logged step; solid: smoothed. L_s and L_t are the hard-label losses of student and "
            "teacher, L_d the student's distance to the teacher's soft labels; `loss` is the weighted sum the "
            "optimizer minimised. The baseline phase is the same student trained on L_s alone.",
            "no steps.jsonl records: no loss curves")
    d = cfg.distillation
    _figure(doc, report, "λ and learning rate", "lambda", plots.plot_lambda(steps, out / "lambda.png"),
            "lambda and learning rate over steps",
            f"λ weights L_d against L_s: loss = (1 − λ)·L_s + λ·L_d{' + L_t' if d.mode == 'sync' else ''}. "
            f"Schedule `{d.schedule.type}`" + (f" over {d.schedule.steps} steps" if d.schedule.steps else "")
            + f", target λ = {d.weight}.",
            "no λ or learning-rate records to plot")
    _figure(doc, report, f"Validation {metric}", "validation",
            plots.plot_validation(evals, metric, HIGHER_IS_BETTER.get(metric, True), out / "validation.png"),
            f"validation {metric} over steps",
            "The student is what gets served; the baseline is the same student without the teacher, so the "
            "space between their lines is what distillation bought on the validation split. Early stopping "
            "keeps each model's best evaluation (ringed).",
            "no validation split or no evaluations: no validation curve")

    doc.h2("Calibration")
    report.figures["calibration"] = _calibration(run, out / "calibration.png", doc, report)

    (out / "report.md").write_text(doc.markdown())
    (out / "report.html").write_text(doc.html(out, f"distill report: {name}"))
    return report


def _figure(doc: "Doc", report: Report, title: str, key: str, series: list[plots.Series], alt: str, caption: str,
            missing: str) -> None:
    """A section with the figure `key`.png (already drawn: `series`) and its caption, or a note that
    there was nothing to draw."""
    doc.h2(title)
    report.figures[key] = series
    if series:
        doc.img(f"{key}.png", alt)
        doc.p(caption)
    else:
        _note(doc, report, missing)


def _note(doc: "Doc", report: Report, text: str) -> None:
    report.notes.append(text)
    doc.p(f"({text}.)")


def _setup(run: Any, info: dict) -> str:
    cfg = run.config
    d = cfg.distillation
    priv = [f["name"] for f in run.schema.get("privileged", [])]
    parts = [f"Task **{cfg.task.type}** on `{cfg.task.label}`, mode **{d.mode}**."]
    if "teacher" in run.features:
        seen = [n for n in run.features["teacher"] if n in priv]
        parts.append(f"Teacher `{cfg.teacher.model}` on {len(run.features['teacher'])} features"
                     + (f" ({len(seen)} privileged: {', '.join(seen)})" if seen else "") + ";")
    for name, mc in (cfg.teachers or {}).items():  # several teachers: each one, then how they are combined
        feats = run.features.get(f"teacher:{name}", [])
        seen = [n for n in feats if n in priv]
        parts.append(f"teacher `{name}` (`{mc.model}`) on {len(feats)} features"
                     + (f" ({len(seen)} privileged: {', '.join(seen)})" if seen else "") + ";")
    if cfg.teachers:
        e = d.ensemble
        how = {"mean": "the mean of their logits", "weights": "fixed weights",
               "gate": f"a learned gate fitted on the {'validation split' if e.fit_on == 'valid' else 'training rows'}"}[e.type]
        parts.append(f"the ensemble: {how};")
    serving = run.features.get("student") or run.features.get("baseline") or []
    parts.append(f"student `{cfg.student.model}` on {len(serving)} serving features.")
    rows = info.get("rows", {}).get("train")
    if rows:
        parts.append(f"{rows:,} training rows;")
    secs = sum(v for k, v in info.items() if k in ("train_seconds", "baseline_seconds") and isinstance(v, (int, float)))
    if secs:
        parts.append(f"trained in {secs:.0f} s" + (f" (the baseline: {info['baseline_seconds']:.0f} s)." if "baseline_seconds" in info else "."))
    if info.get("shared_tables"):
        parts.append(f"Shared embedding tables: {', '.join(info['shared_tables'])}.")
    if info.get("shared_sequence_encoders"):
        parts.append(f"Shared sequence encoders: {', '.join(info['shared_sequence_encoders'])}.")
    return " ".join(parts)


def _calibration(run: Any, path: Path, doc: "Doc", report: Report) -> list[plots.Series]:
    """Predictions of each model on the test split (else valid), binned against what happened."""
    from distill.data.io import read_table
    from distill.inference import label_values, predict_logits, to_output

    cfg = run.config
    split = "test" if cfg.data.test else "valid" if cfg.data.valid else None
    if split is None:
        _note(doc, report, "calibration needs a valid or test split; the config has neither")
        return []
    spec = getattr(cfg.data, split)
    try:
        table = read_table(spec, cfg.data.format)
    except DistillError as e:
        _note(doc, report, f"calibration skipped: cannot read the {split} split ({e})")
        return []
    if table.num_rows > CALIBRATION_ROWS:  # bins of 20k rows are plenty; a huge test split would only cost time
        pick = np.sort(np.random.default_rng(0).choice(table.num_rows, CALIBRATION_ROWS, replace=False))
        table = table.take(pick)
    curves, scores = {}, {}
    for role in [r for r in run.models if r.startswith("teacher")] + ["student", "baseline"]:  # every teacher
        if role not in run.models:
            continue
        missing = [n for n in run.features[role] + [cfg.task.label] if n not in table.column_names]
        if missing:
            _note(doc, report, f"{role} left out of the calibration plot: the {split} split has no column '{missing[0]}'")
            continue
        enc = run.encoders.encode(cfg, table, spec, features=run.features[role])
        pred = to_output(predict_logits(run.models[role], enc, run.features[role]), run.encoders.label)
        y = label_values(enc, run.encoders.label)
        curves[role] = plots.calibration(y, pred, cfg.task.type)
        scores[role] = pred.max(1) if cfg.task.type == "multiclass" else pred
    drawn = plots.plot_calibration(curves, scores, cfg.task.type, split, path)
    if drawn:
        doc.img("calibration.png", "calibration: predicted vs observed")
        what = {"binary": "the observed rate of positives against the mean predicted probability",
                "multiclass": "accuracy against the mean confidence in the top class",
                "regression": "the mean observed value against the mean prediction"}[cfg.task.type]
        doc.p(f"Rows of the {split} split sorted by each model's prediction into 10 equal-count bins; each point "
              f"is {what} in one bin. On the dotted diagonal a model is calibrated; below it, it over-predicts."
              + (" ECE = the row-weighted mean distance to the diagonal. Below: how the predictions spread."
                 if cfg.task.type != "regression" else ""))
    return drawn


# ----------------------------------------------------------------------------- one document, two renderings


class Doc:
    """A short list of blocks rendered as Markdown and as self-contained HTML (no Markdown parser
    needed: the blocks already know what they are)."""

    def __init__(self) -> None:
        self.blocks: list[tuple[str, Any]] = []

    def h1(self, text: str) -> None:
        self.blocks.append(("h1", text))

    def h2(self, text: str) -> None:
        self.blocks.append(("h2", text))

    def p(self, text: str) -> None:
        self.blocks.append(("p", text))

    def table(self, header: list[str], rows: list[list[str]]) -> None:
        self.blocks.append(("table", (header, rows)))

    def img(self, name: str, alt: str) -> None:
        self.blocks.append(("img", (name, alt)))

    def markdown(self) -> str:
        out = []
        for kind, x in self.blocks:
            if kind == "h1":
                out.append(f"# {x}")
            elif kind == "h2":
                out.append(f"## {x}")
            elif kind == "p":
                out.append(x)
            elif kind == "table":
                header, rows = x
                out.append("\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                                     + ["| " + " | ".join(r) + " |" for r in rows]))
            elif kind == "img":
                out.append(f"![{x[1]}]({x[0]})")
        return "\n\n".join(out) + "\n"

    def html(self, image_dir: Path, title: str) -> str:
        body = []
        for kind, x in self.blocks:
            if kind in ("h1", "h2"):
                body.append(f"<{kind}>{_inline(x)}</{kind}>")
            elif kind == "p":
                body.append(f"<p>{_inline(x)}</p>")
            elif kind == "table":
                header, rows = x
                head = "".join(f"<th>{_inline(h)}</th>" for h in header)
                trs = "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in rows)
                body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{trs}</tbody></table>")
            elif kind == "img":
                data = base64.b64encode((image_dir / x[0]).read_bytes()).decode()
                body.append(f'<img alt="{html.escape(x[1])}" src="data:image/png;base64,{data}">')
        return (f"<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
                f"<style>{CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def _inline(text: str) -> str:
    """The two inline marks the report uses: **bold** and `code`."""
    t = html.escape(text)
    t = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", t)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", t)


CSS = """
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 62rem; margin: 2rem auto;
       padding: 0 1rem; color: #222; }
h1 { font-size: 1.6rem; } h2 { font-size: 1.2rem; margin-top: 2rem; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; margin: .5rem 0; }
th, td { padding: .25rem .7rem; border-bottom: 1px solid #eee; text-align: right; }
th:first-child, td:first-child { text-align: left; }
img { max-width: 100%; } code { background: #f4f4f4; padding: 0 .2rem; }
"""
