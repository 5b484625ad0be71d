"""The `distill` command: a thin layer over the Python API. Every command is a few lines.

A user's mistake (DistillError) prints one line and exits 2; no traceback.
"""
from __future__ import annotations

import errno
import functools
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable, Optional

import typer
import yaml
from typer.core import TyperCommand, TyperGroup
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from distill.config import closest, load_config
from distill.errors import DistillError, MissingFeatureError

class _FlagsShowNoType:
    """typer prints `<bool>` beside a flag (--help among them) as if it took a value; a flag shows
    no type. Applied to every command, so a flag added later needs no `metavar=""` of its own."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for param in self.params:
            if getattr(param, "is_flag", False) and param.metavar is None:
                param.metavar = ""

    def get_help_option(self, ctx: Any) -> Any:
        option = super().get_help_option(ctx)
        if option is not None and option.metavar is None:
            option.metavar = ""
        return option


class _Command(_FlagsShowNoType, TyperCommand):
    pass


class _Group(_FlagsShowNoType, TyperGroup):
    pass


class _Typer(typer.Typer):
    def command(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("cls", _Command)
        return super().command(*args, **kwargs)


app = _Typer(
    cls=_Group,
    help="Knowledge distillation for recommendation and classification: train a teacher and a "
         "student (model or privileged-features distillation) and serve only the student.",
    epilog="Start with `distill demo`. Your data: distill init DATA → distill validate CONFIG → "
           "distill train CONFIG (writes RUN/report/) → distill compare CONFIG.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
)
out = Console()
err = Console(stderr=True)


def guarded(fn: Callable) -> Callable:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (DistillError, MissingFeatureError) as e:
            err.print(f"[bold red]error:[/]{_rank_tag()} {escape(str(e))}", highlight=False, soft_wrap=True)  # printed literally: a message may hold [brackets]
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err.print("interrupted; nothing was written")
            raise typer.Exit(130) from None
        except OSError as e:
            if e.errno != errno.ENOSPC:
                raise
            # what a command did not catch itself still reads as one line, not a traceback
            err.print(f"[bold red]error:[/]{_rank_tag()} {e.filename or 'a file'}: no space left on device",
                      highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
    return wrapper


def _rank_tag() -> str:
    """' [rank r]' under torchrun (every rank reports its own error), '' otherwise."""
    return f" \\[rank {os.environ.get('RANK', '0')}]" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else ""


def _is_main() -> bool:
    return os.environ.get("RANK", "0") == "0"  # torchrun's rank; read here to keep torch out of the CLI's import


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    overrides = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise DistillError(f"--set '{item}': write it as key=value, e.g. --set train.epochs=3")
        overrides[key.strip()] = yaml.safe_load(value)
    return overrides


def metrics_table(metrics: dict[str, dict[str, dict[str, Any]]], title: str) -> Table:
    from distill.results import metric_rows
    header, rows = metric_rows(metrics, bold=("[bold]", "[/]"))
    table = Table(title=escape(title))  # a path may hold [brackets]
    for i, name in enumerate(header):
        table.add_column(name, justify="right" if i >= 2 else "left")
    for row in rows:
        table.add_row(*row)
    return table


def print_table(table: Table) -> None:
    """A table at its natural width when stdout is a pipe or a log: rich would squeeze it into 80
    columns, cutting 'baseline' to 'baseli…' and the gain row's name over four lines."""
    if out.is_terminal:
        out.print(table)
        return
    width = out.width
    out.width = max(width, 160)  # print's own width= can only narrow the console's
    try:
        out.print(table)
    finally:
        out.width = width


def _run_warnings(path: Path) -> list[str]:
    try:
        return list(json.loads((path / "run.json").read_text()).get("warnings") or [])
    except (OSError, ValueError):
        return []


def print_verdict(v: dict[str, Any]) -> None:
    if v.get("headline"):
        out.print(f"[bold]verdict[/] — {v['headline']}", highlight=False, soft_wrap=True)
    for m, why in (v.get("left_out") or {}).items():
        out.print(f"note: {m} left out: {why}", highlight=False, soft_wrap=True)


def version_callback(value: bool) -> None:
    if value:
        from distill import __version__
        print(f"distill {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(version: bool = typer.Option(False, "--version", callback=version_callback, is_eager=True, metavar="",
                                               help="Print the version and exit.")) -> None:
    """Knowledge distillation for recommendation and classification."""


SetOption = typer.Option(None, "--set", metavar="KEY=VALUE", help="Override a config key, e.g. --set train.epochs=3 (repeatable).")
NoReportOption = typer.Option(False, "--no-report", metavar="", help="Skip writing report/ (Markdown and HTML with plots) at the end.")


@app.command()
@guarded
def train(config: Path = typer.Argument(..., help="The YAML config."),
          output: Optional[Path] = typer.Option(None, "--output", "-o", help="Run directory (default: the config's `output`)."),
          overwrite: bool = typer.Option(False, metavar="", help="Replace an existing run directory (only one distill wrote), "
                                                     "or discard an interrupted run's checkpoints."),
          resume: Optional[Path] = typer.Option(None, help="Continue the interrupted run at this output from its last checkpoint."),
          set_: Optional[list[str]] = SetOption,
          quiet: bool = typer.Option(False, "--quiet", "-q", metavar="", help="No progress lines."),
          no_report: bool = NoReportOption) -> None:
    """Train teacher, student and the no-distillation baseline; write a run directory."""
    from distill.run import train as train_run
    run = train_run(load_config(config, parse_overrides(set_)), output=resume or output, overwrite=overwrite,
                    quiet=quiet, resume=resume is not None)
    if _is_main():  # under torchrun, rank 0 speaks for the job
        from distill.results import primary_metric, run_verdict
        if quiet:  # -q drops the progress lines, which carried the warnings; a warning is not progress
            for w in _run_warnings(run.path):
                err.print(f"[yellow]warning:[/] {escape(w)}", highlight=False, soft_wrap=True)
        print_table(metrics_table(run.metrics, str(run.path)))
        print_verdict(run_verdict(run.path, run.metrics, primary_metric(run.config), run.config.task.type))
        out.print(f"run written to [bold]{escape(str(run.path))}[/]")
        diagnose_after(run.path)
        if not no_report:
            report_after(run.path)


@app.command()
@guarded
def compare(config: Path = typer.Argument(..., help="The YAML config."),
            seeds: int = typer.Option(5, help="How many seeds (train.seed, train.seed + 1, ...)."),
            output: Optional[Path] = typer.Option(None, "--output", "-o", help="Where compare.json, compare.md and the runs go "
                                                  "(default: OUTPUT/compare, OUTPUT the config's `output`)."),
            overwrite: bool = typer.Option(False, metavar="", help="Replace an existing compare directory."),
            set_: Optional[list[str]] = SetOption,
            quiet: bool = typer.Option(False, "--quiet", "-q", metavar="", help="No progress lines."),
            no_report: bool = NoReportOption,
            retrieval: bool = typer.Option(False, "--retrieval", help="A two_tower student on grouped data: also recall@k and "
                                           "NDCG@k over the whole catalogue, with verdicts (distill evaluate --retrieval).")) -> None:
    """Distilled student vs the baseline over seeds: mean ± std, the gain with its 95% interval and verdict, gap closed."""
    from distill.compare import compare as run_compare, default_output, to_markdown
    cfg = load_config(config, parse_overrides(set_))
    output = output or default_output(cfg)
    if retrieval:
        from distill.retrieval import check_retrieval
        check_retrieval(cfg)  # before any seed trains, not after
    summary = run_compare(cfg, seeds=seeds, output=output, overwrite=overwrite, quiet=quiet, retrieval=retrieval)
    print(to_markdown(summary))
    if retrieval:
        from distill.retrieval import retrieval_markdown
        print(retrieval_markdown(summary["retrieval"], "distilled vs baseline two-tower student"))
    out.print(f"written to [bold]{escape(str(output))}[/]/compare.json and compare.md")
    diagnose_after(output)
    if not no_report:
        report_after(output)


@app.command()
@guarded
def tune(config: Path = typer.Argument(..., help="The YAML config (its `tune:` section is the search space)."),
         trials: int = typer.Option(20, help="Finished trials the study should hold (counted across processes and restarts)."),
         timeout: Optional[float] = typer.Option(None, help="Stop starting trials after this many seconds."),
         storage: Optional[str] = typer.Option(None, help="Optuna storage: a .journal path or sqlite:///, postgresql://, "
                                               "mysql:// URL (default: OUTPUT/study.journal)."),
         study: Optional[str] = typer.Option(None, help="Study name (default: distill)."),
         output: Optional[Path] = typer.Option(None, "--output", "-o", help="Where the study, best.yaml, compare.json and tune.md go "
                                               "(default: the config's `output`/tune)."),
         seeds: int = typer.Option(3, help="Seeds the best setting is retrained over against the baseline (0: search only)."),
         explain: bool = typer.Option(False, "--explain", metavar="", help="Also how much each privileged feature adds to "
                                      "the teacher (its validation metric with the column shuffled)."),
         set_: Optional[list[str]] = SetOption,
         quiet: bool = typer.Option(False, "--quiet", "-q", metavar="", help="No progress lines.")) -> None:
    """Search λ, T, the schedule and the mode on validation (trial 0: the baseline), then the best against the baseline on test."""
    from distill.tune import default_output as tune_output, tune as run_tune
    cfg = load_config(config, parse_overrides(set_))
    output = output or tune_output(cfg)
    run_tune(cfg, trials=trials, timeout=timeout, storage=storage, study_name=study, output=output, seeds=seeds, quiet=quiet,
             explain_features=explain)
    out.print(f"written to [bold]{escape(str(output))}[/]: best.yaml, tune.md, tune.html"
              + (", compare.json" if seeds else ""))


@app.command()
@guarded
def evaluate(run: Path = typer.Argument(..., help="A run directory."),
             data: Optional[Path] = typer.Option(None, help="Labelled Parquet/CSV (default: the run's valid and test splits)."),
             as_json: bool = typer.Option(False, "--json", metavar="", help="Print JSON instead of a table."),
             role: Optional[list[str]] = typer.Option(None, "--role", metavar="ROLE", help="Evaluate only this model: teacher, student or baseline (repeatable; default: all)."),
             retrieval: bool = typer.Option(False, "--retrieval", help="A two_tower student on grouped data: recall@k and NDCG@k "
                                            "ranking the whole catalogue by the towers' inner product, beside each model on the "
                                            "logged candidates. RUN may be a compare directory (verdicts over its seeds).")) -> None:
    """Metrics of the run's teacher, student and baseline on its splits or on new data."""
    from distill.run import ROLES, load_run
    if retrieval:
        from distill.retrieval import evaluate_retrieval, retrieval_markdown
        result = evaluate_retrieval(run)
        print(json.dumps(result, indent=2, default=float) if as_json else retrieval_markdown(result, str(run)))
        return
    for name in role or []:
        if name not in ROLES:
            raise DistillError(f"--role: '{name}' is not one of {', '.join(ROLES)}"
                               + "".join(f" (did you mean '{c}'?)" for c in closest(name, list(ROLES))))
    r = load_run(run, roles=role or None)  # a model left out is not built (nor its `module:` imported)
    result = r.evaluate(data)
    entries = [e for by_split in result.values() for e in by_split.values()]
    if entries and all("skipped" in e for e in entries):  # a table of skips would read as success
        raise DistillError(f"{data or run}: no model can be evaluated: {entries[0]['skipped']}")
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        print_table(metrics_table(result, f"{run}" + (f" on {data}" if data else "")))


@app.command()
@guarded
def demo(output: Path = typer.Option(Path("runs/demo"), "--output", "-o", help="Where the demo's data and runs go."),
         seeds: int = typer.Option(3, help="Seeds for the comparison."),
         quiet: bool = typer.Option(False, "--quiet", "-q", metavar="", help="No progress lines."),
         no_report: bool = NoReportOption) -> None:
    """Generate a synthetic e-commerce log with privileged features and run `compare` on it."""
    from distill.compare import compare as run_compare, to_markdown
    from distill.demo import write_demo_data
    if output.exists() and any(output.iterdir()) and not (output / "data" / "config.yaml").is_file():
        raise DistillError(f"{output}: exists and is not a previous demo; choose another --output")
    cfg_path = write_demo_data(output / "data")
    out.print(f"synthetic impression log and config written to {output / 'data'}", markup=False)
    summary = run_compare(load_config(cfg_path), seeds=seeds, output=output / "compare", overwrite=True, quiet=quiet)
    print(to_markdown(summary, "distill demo: PFD on a synthetic impression log"))
    out.print(f"details in [bold]{escape(str(output / 'compare'))}[/] (compare.md, one run directory per seed)")
    diagnose_after(output / "compare")  # the why: lines, as after compare
    if not no_report:
        report_after(output / "compare")


# ----------------------------------------------------------------------------- observe: report, init, validate


def diagnose_after(path: Path) -> None:
    """Why distillation did or did not pay (distill/diagnostics.py), printed only for the checks that apply."""
    from distill.diagnostics import diagnose, lines
    try:
        found = lines(diagnose(path))
    except DistillError as e:
        err.print(f"[yellow]no diagnostics:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
        return
    for line in found:
        out.print(f"[bold]why:[/] {escape(line)}", highlight=False, soft_wrap=True)


def report_after(path: Path) -> None:
    """The report at the end of train / compare / demo: a failure here must not look like a failed run."""
    from distill.report import write_report
    try:
        report = write_report(path)
    except DistillError as e:
        err.print(f"[yellow]no report:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
        return
    out.print(f"report: [bold]{escape(str(report.html))}[/] (and report.md, with the plots beside it)", soft_wrap=True)


@app.command()
@guarded
def report(run: Path = typer.Argument(..., help="A run directory, or a compare directory (compare.json and seed_* runs)."),
           output: Optional[Path] = typer.Option(None, "--output", "-o", help="Where to write (default: RUN/report); an existing "
                                                 "directory is replaced only if it is a report distill wrote.")) -> None:
    """Write a readable report of a run: loss terms, λ, validation curves, calibration, gain table (Markdown + HTML)."""
    from distill.report import write_report
    r = write_report(run, output)
    for note in r.notes:
        err.print(f"note: {note}", highlight=False, markup=False)
    out.print(f"written [bold]{escape(str(r.html))}[/] and {escape(r.markdown.name)}, plots: {escape(', '.join(sorted(p.name for p in r.directory.glob('*.png'))))}",
              soft_wrap=True)


@app.command()
@guarded
def init(data: str = typer.Argument(..., help="A Parquet or CSV file (or directory / glob) with the training data."),
         output: Path = typer.Option(Path("config.yaml"), "--output", "-o", help="Where to write the config."),
         label: Optional[str] = typer.Option(None, help="The label column (default: guessed; asked on a terminal)."),
         force: bool = typer.Option(False, "--force", metavar="", help="Replace an existing config file.")) -> None:
    """Write a commented starter config from a table's columns (types and label guessed, nothing privileged)."""
    from distill.init import init_config

    def ask(columns: list[str]) -> str:
        out.print("Cannot tell which column is the label. Columns: " + ", ".join(columns), highlight=False, markup=False)
        return typer.prompt("label column")

    g = init_config(data, output, label=label, force=force, ask=ask if sys.stdin.isatty() else None)
    table = Table(title=escape(f"{output}: label '{g.label}' ({g.task})"), title_justify="left")
    for col in ("column", "type", "why"):
        table.add_column(col)
    for c in g.columns:
        table.add_row(escape(c.name), c.type or "[dim]left out[/]", escape(c.why))
    out.print(table)
    out.print(f"Next: check the types, set [bold]privileged: true[/] on the columns that are missing at serving time, "
              f"then [bold]distill validate {escape(str(output))}[/].")


@app.command()
@guarded
def validate(config: Path = typer.Argument(..., help="The YAML config."),
             set_: Optional[list[str]] = SetOption,
             strict: bool = typer.Option(False, "--strict", metavar="", help="Exit 1 on warnings too.")) -> None:
    """Check the config against the data without training; print what would be trained."""
    from distill.validate import render, validate as run_validate
    cfg = load_config(config, parse_overrides(set_))
    v = run_validate(cfg)
    render(v, cfg, out)
    if strict and v.warnings:
        err.print(f"{len(v.warnings)} warning(s) and --strict: exit 1")
        raise typer.Exit(1)
    out.print(f"[green]ok:[/] {escape(str(config))} and its data fit together; nothing was trained.", highlight=False)



# ----------------------------------------------------------------------------- serving the student


TrustTorchScriptOption = typer.Option(
    False, "--trust-torchscript", metavar="",
    help="Load a TorchScript export. It is code and can do anything: only for one you trust (ONNX is data).")


@app.command("export")
@guarded
def export_cmd(run: Path = typer.Argument(..., help="A run directory."),
               fmt: str = typer.Option("onnx", "--format", help="onnx or torchscript."),
               out_dir: Optional[Path] = typer.Option(None, "--out", "--output", "-o", help="Export directory (default: RUN/export-FORMAT); an "
                                                      "existing one is replaced only if it is an export distill wrote."),
               towers: bool = typer.Option(False, "--towers", help="A two_tower student: also export its user and item "
                                           "towers (user_tower.onnx, item_tower.onnx), each leak-checked.")) -> None:
    """Export the student alone (graph on serving features, encoders, manifest) and leak-check it."""
    from distill.serving.export import export
    d = export(run, fmt, out_dir, towers=towers)
    manifest = json.loads((d / "manifest.json").read_text())
    for c in manifest["leak_check"]["checks"]:
        out.print(f"leak check, {c['check']}: passed ({c['detail']})", highlight=False, markup=False)
    for side, spec in manifest.get("towers", {}).items():
        for c in spec["leak_check"]["checks"]:
            out.print(f"leak check, {side} tower, {c['check']}: passed ({c['detail']})", highlight=False, markup=False)
    out.print(f"exported to [bold]{escape(str(d))}[/]")


@app.command()
@guarded
def embed(run: Path = typer.Argument(..., help="A two_tower run directory, or an export made with --towers."),
          data: Path = typer.Argument(..., help="Parquet or CSV of items (a file, directory or glob): the item tower's features."),
          output: Path = typer.Option(..., "--output", "-o", help="The Parquet file to write: item_id, vector "
                                                          "(fixed_size_list<float32>); an existing Parquet file is replaced."),
          id_column: Optional[str] = typer.Option(None, "--id", help="The item id column (default: item_id if the item tower reads it, else its first feature)."),
          chunk_rows: int = typer.Option(65_536, help="Rows per chunk: memory is bounded by the chunk and the ids seen.")) -> None:
    """One item-tower vector per distinct item id, for a FAISS index or a vector database."""
    from distill.serving.embed import embed as embed_items
    from distill.serving.load import load_model
    from distill.serving.predict import check_output
    from distill.data.io import resolve_files
    from distill.serving.scratch import scratch_export, sigterm_exits
    check_output(output)
    resolve_files(str(data))  # a missing input is said before a run's export, not seconds after it
    # a run is exported to the scratch folder; it and the partial output go on exit, SIGTERM too
    with sigterm_exits(), scratch_export(run, "onnx", towers=True) as source:
        s = embed_items(load_model(source, towers=True), data, output, id_column=id_column, chunk_rows=chunk_rows)
    out.print(f"{s.items:,} item vectors (d = {s.dim}) from {s.rows:,} rows, written to [bold]{escape(str(output))}[/]")


@app.command()
@guarded
def predict(run: Path = typer.Argument(..., help="A run directory or an exported model."),
            data: Path = typer.Argument(..., help="Parquet or CSV (a file, directory or glob)."),
            output: Path = typer.Option(..., "--output", "-o", help="The Parquet file to write (an existing Parquet file "
                                                          "is replaced; never an input or another kind of file)."),
            keep: Optional[list[str]] = typer.Option(None, "--keep", metavar="COLUMN", help="Copy this input column (e.g. an id) to the output (repeatable)."),
            chunk_rows: int = typer.Option(65_536, help="Rows per chunk: memory is bounded by the chunk, not the file."),
            trust_torchscript: bool = TrustTorchScriptOption) -> None:
    """Score a file with the student, in chunks; columns the student does not read are ignored.

    A run directory is exported first, to <tmp>/distill-serve-<uid>/, removed on exit (also on SIGTERM, with the partial output)."""
    from distill.data.io import resolve_files
    from distill.serving.load import load_model
    from distill.serving.predict import check_output, score
    from distill.serving.scratch import scratch_export, sigterm_exits

    def said_once(s) -> None:
        priv = f" (privileged: {', '.join(s.ignored_privileged)})" if s.ignored_privileged else ""
        err.print(f"ignoring {len(s.ignored)} column(s) the student does not read: {', '.join(s.ignored)}{priv}",
                  highlight=False, soft_wrap=True, markup=False)

    check_output(output)  # before an on-the-fly export, not after it
    resolve_files(str(data))  # so is a missing input
    # a run is exported to the scratch folder; it and the partial output go on exit, SIGTERM too
    with sigterm_exits(), scratch_export(run, "onnx") as source:
        summary = score(load_model(source, trust_torchscript=trust_torchscript), data, output, keep=keep,
                        chunk_rows=chunk_rows, on_ignored=said_once)
    out.print(f"{summary.rows:,} rows scored in {summary.chunks} chunk(s), written to [bold]{escape(str(output))}[/]")


@app.command()
@guarded
def serve(run: Path = typer.Argument(..., help="A run directory or an exported model."),
          host: str = typer.Option("127.0.0.1", help="Interface to listen on."),
          port: int = typer.Option(8000, help="Port (0: a free one, named in the line printed when ready)."),
          fmt: str = typer.Option("onnx", "--format", help="Runtime when RUN is a run directory: onnx or torchscript."),
          threads: Optional[int] = typer.Option(None, help="Threads per prediction (default: the runtime's)."),
          max_body_bytes: int = typer.Option(8 * 1024 * 1024, min=1, help="Largest request body; beyond it 413, before it is read whole."),
          max_rows: int = typer.Option(10_000, min=1, help="Most rows in one request; beyond it 413."),
          access_log: bool = typer.Option(True, "--access-log/--no-access-log",
                                          help="One line per request on stderr: method, path, status, ms, rows."),
          trust_torchscript: bool = TrustTorchScriptOption) -> None:
    """HTTP service: POST /predict, GET /health, GET /metadata (OpenAPI at /docs).

    A run directory is exported first, to <tmp>/distill-serve-<uid>/, removed on exit (also on SIGTERM); one left by a killed process is removed by the next start."""
    from distill.serving.exported import TORCHSCRIPT_IS_CODE
    from distill.serving.load import load_model
    from distill.serving.scratch import scratch_export
    from distill.serving.service import create_app, run_service, to_stderr
    if fmt == "torchscript" and not trust_torchscript and not (run / "manifest.json").is_file():
        raise DistillError(TORCHSCRIPT_IS_CODE.format(where=run))  # before exporting the run, not after
    with scratch_export(run, fmt) as source:
        model = load_model(source, fmt, threads, trust_torchscript)
        app = create_app(model, max_body_bytes, max_rows, access_log=to_stderr if access_log else None)
        what = f"the {model.manifest['model']} {model.manifest['role']} of {run} ({model.format})"
        run_service(app, host, port, what)


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
