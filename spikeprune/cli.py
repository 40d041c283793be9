"""The `spikeprune` command: one subcommand per step of the workflow.

Each handler only parses arguments and calls the public Python API, so everything the command
does can be done from Python too. Bad input surfaces as ``SpikepruneError``: one line, exit 2.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Callable, Sequence

from spikeprune.models.errors import SpikepruneError

DESCRIPTION = """\
Compress spiking BERT models by search: attention heads and FFN neurons kept per layer,
timesteps per layer and weight bit widths, scored on a GLUE metric against counted synaptic
operations, energy, latency and size. The result is a Pareto front you can explore and export.

typical workflow:
  spikeprune prepare --task sst2 --glue-dir ../shared/glue     teacher + spiking student
  spikeprune evaluate --prepared runs/prepared/sst2-quick --config c.yaml
  spikeprune demo --glue-dir ../shared/glue                    the whole job on the defaults
"""


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--glue-dir", default=os.environ.get("SPIKEPRUNE_GLUE_DIR"),
                   help="local GLUE folder in the classic layout (<TASK>/train.tsv, dev.tsv); "
                        "default $SPIKEPRUNE_GLUE_DIR, else download through `datasets`")
    p.add_argument("--run-dir", default="runs", type=Path,
                   help="where prepared models, studies and reports go (default: ./runs)")


def _add_prepare_args(p: argparse.ArgumentParser) -> None:
    from spikeprune.models.train import PRESETS

    p.add_argument("--task", default="sst2", help="GLUE task: cola, sst2, mrpc, qqp, stsb, mnli, qnli, rte, wnli (default sst2)")
    p.add_argument("--preset", default="quick", choices=sorted(PRESETS),
                   help="training budget: quick = minutes on a laptop CPU, full = GPU-sized, tiny = tests (default quick)")
    p.add_argument("--base", default=None,
                   help="BERT-family teacher checkpoint, local folder or hub id (default: offline all-MiniLM-L6-v2)")
    p.add_argument("--device", default="cpu", help="torch device for training, e.g. cpu or cuda (default cpu)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                   help="change one field of the preset, e.g. --set distill_examples=4000 (repeatable)")


def _prepare(args: argparse.Namespace) -> Path:
    """``prepare`` with the options of ``_add_prepare_args`` (the preset changed by any --set)."""
    from spikeprune.models.train import override_preset, prepare

    return prepare(args.task, args.glue_dir, args.run_dir, preset=override_preset(args.preset, args.overrides),
                   base=args.base, device=args.device, seed=args.seed)


def cmd_prepare(args: argparse.Namespace) -> int:
    print(f"prepared base: {_prepare(args)}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from spikeprune.models.config import CompressionConfig
    from spikeprune.models.ops import format_report
    from spikeprune.models.trial import BaseBundle, run_trial

    compression = CompressionConfig.load(args.config) if args.config else CompressionConfig()
    base = BaseBundle.load(args.prepared, glue_dir=args.glue_dir)
    result = run_trial(base, compression, max_examples=args.max_examples,
                       seed=args.seed, energy=args.energy)
    print(format_report(result.report))
    metrics = ", ".join(f"{k} {v:.4f}" for k, v in result.metrics.items())
    lo, hi = result.metric_ci
    print(f"{base.task} dev ({result.examples} examples): {metrics} (95% CI {lo:.4f}..{hi:.4f})")
    print(f"time: " + ", ".join(f"{k} {v:.2f}s" for k, v in result.timing.items()))
    if args.json:
        args.json.write_text(json.dumps(result.to_dict(), indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


def _add_study_args(p: argparse.ArgumentParser, many: bool = False) -> None:
    if many:
        p.add_argument("studies", nargs="+", metavar="STUDY", help="names of the studies to overlay")
    else:
        p.add_argument("study", metavar="STUDY", help="study name (as given to `spikeprune search --study`)")
    p.add_argument("--storage", default=None,
                   help="SQLAlchemy URL (postgresql+psycopg2://...) or journal file; default RUN_DIR/STUDY/journal.log")
    p.add_argument("--run-dir", default="runs", type=Path, help="where studies live (default: ./runs)")


def _storage_for(args: argparse.Namespace, study: str) -> str:
    """The study's storage: --storage if given, else its embedded journal, which must exist."""
    from spikeprune.search.storage import default_storage

    if args.storage:
        return args.storage
    journal = default_storage(args.run_dir, study)
    if not journal.is_file():
        raise SpikepruneError(f"no study journal at {journal}; check the study name and --run-dir, or pass --storage")
    return str(journal)


def _open_study(args: argparse.Namespace, study: str):  # -> optuna.Study (optuna imported lazily)
    from spikeprune.results.pareto import load_study
    from spikeprune.search.storage import open_storage

    return load_study(study, open_storage(_storage_for(args, study)))


def cmd_report(args: argparse.Namespace) -> int:
    from spikeprune.results.report import write_report

    study = _open_study(args, args.study)
    out = args.out or args.run_dir / args.study / "report.html"
    written = write_report(study, out, images=args.images)
    for path in written:
        print(f"wrote {path}")
    return 0


def cmd_trials(args: argparse.Namespace) -> int:
    from spikeprune.results.tables import trials_frame, write_trials

    study = _open_study(args, args.study)
    if args.out is None:
        frame = trials_frame(study)
        print(frame.to_csv(index=False) if args.format == "csv" else frame.to_json(orient="records", indent=1))
        return 0
    print(f"wrote {write_trials(study, args.out, args.format)}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from spikeprune.results.tables import compare_fronts

    studies = [_open_study(args, name) for name in args.studies]
    print(f"wrote {compare_fronts(studies, args.out, labels=args.labels)}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from spikeprune.results.export import export_trial, select_trials

    study = _open_study(args, args.study)
    meta = study.user_attrs.get("spikeprune") or {}
    prepared = args.prepared or meta.get("prepared")
    if not prepared:
        raise SpikepruneError(f"study {args.study} does not record its prepared base; pass --prepared")
    chosen = select_trials(study, trial=args.trial, pareto=args.pareto, max_sops=args.max_sops,
                           min_metric=args.min_metric)
    out = args.out or args.run_dir / args.study / "export"
    failed = 0
    for trial in chosen:
        result = export_trial(study, trial, out, prepared, args.glue_dir, overwrite=args.overwrite)
        verdict = "ok" if result.ok else "MISMATCH: " + "; ".join(result.problems)
        values = ", ".join(f"{k} {v:.4g}" for k, v in result.measured.items())
        print(f"trial {trial.number} -> {result.folder} ({values}) {verdict}")
        failed += not result.ok
    if failed:
        print(f"error: {failed} export(s) re-measured outside the tolerance", file=sys.stderr)
        return 1
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    from optuna_dashboard import run_server

    from spikeprune.search.storage import open_storage

    storage = open_storage(_storage_for(args, args.study))
    print(f"optuna-dashboard for {args.study} on http://{args.host}:{args.port}/ (Ctrl-C to stop)")
    run_server(storage, host=args.host, port=args.port)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """The main job end to end: prepare (cached), search, report, export the best under a budget."""
    import time

    from spikeprune.results.export import export_trial, select_trials
    from spikeprune.results.pareto import find_baseline
    from spikeprune.results.report import write_report
    from spikeprune.search import SearchSettings, run_search

    start = time.perf_counter()
    prepared = _prepare(args)
    study_name = f"demo-{args.task}-{args.preset}"
    study = run_search(SearchSettings(prepared=prepared, space=args.space, study_name=study_name,
                                      n_trials=args.n_trials, workers=args.workers, run_dir=args.run_dir,
                                      seed=args.seed, glue_dir=args.glue_dir))
    report = write_report(study, args.run_dir / study_name / "report.html")[0]
    baseline = find_baseline(study)
    floor = baseline["metric"] - args.max_drop
    chosen = select_trials(study, min_metric=floor)
    export = export_trial(study, chosen[0], args.run_dir / study_name / "export", prepared, args.glue_dir,
                          overwrite=True)
    print(f"\nprepared base   {prepared}")
    print(f"study           {study_name} in {args.run_dir / study_name / 'journal.log'} "
          f"(spikeprune status {study_name} --run-dir {args.run_dir})")
    print(f"report          {report}")
    print(f"best config with metric >= {floor:.4f} (baseline {baseline['metric']:.4f} - {args.max_drop}): "
          f"trial {export.trial}, " + ", ".join(f"{k} {v:.4g}" for k, v in export.measured.items()))
    print(f"export          {export.folder} ({'re-measured ok' if export.ok else 'MISMATCH: ' + '; '.join(export.problems)})")
    print(f"total time      {time.perf_counter() - start:.0f} s")
    return 0 if export.ok else 1


def build_parser() -> argparse.ArgumentParser:
    from spikeprune.search.cli import ArgumentParser, add_search_arguments, add_status_arguments, cmd_search, cmd_status

    parser = ArgumentParser(prog="spikeprune", description=DESCRIPTION,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version="spikeprune " + _version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, handler: Callable[[argparse.Namespace], int], help: str, description: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=description,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.set_defaults(handler=handler)
        return p

    p = add("prepare", cmd_prepare, "fine-tune a BERT teacher and distill a spiking student",
            "Fine-tune a BERT teacher on a GLUE task, build a SpikingBERT student from its weights,\n"
            "distill it through surrogate gradients and print both dev scores. Finished stages are\n"
            "cached under RUN_DIR/prepared/<task>-<preset>/ and an interrupted run resumes.")
    _add_prepare_args(p)
    _add_data_args(p)

    p = add("evaluate", cmd_evaluate, "compress the base student by one config and measure it",
            "Apply a compression config (YAML: heads, neurons, timesteps, weight_bits, recovery_steps;\n"
            "each one value or one per layer) to a prepared student, evaluate it on the dev set and\n"
            "print the metric with its bootstrap interval, synaptic operations, energy, latency and size.")
    p.add_argument("--prepared", required=True, type=Path, help="prepared base folder (from `spikeprune prepare`)")
    p.add_argument("--config", type=Path, default=None, help="compression config YAML (default: no compression)")
    p.add_argument("--max-examples", type=int, default=None, help="evaluate on the first N dev examples only")
    p.add_argument("--energy", default="float45nm", help="energy model preset: float45nm or int45nm (default float45nm)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--json", type=Path, default=None, help="also write the full result as JSON here")
    p.add_argument("--glue-dir", default=os.environ.get("SPIKEPRUNE_GLUE_DIR"),
                   help="local GLUE folder (default: the one recorded when the base was prepared)")

    p = add("search", cmd_search, "run or resume a multi-objective compression search",
            "Search the space (heads, FFN neurons, timesteps, bit widths per layer) of a prepared base with\n"
            "an Optuna multi-objective study whose trials run as Ray tasks. The driver is the only writer to\n"
            "storage; re-running with the same --study resumes, re-queuing trials a dead driver left running.")
    add_search_arguments(p)

    p = add("status", cmd_status, "show a study's progress and Pareto front",
            "Print a study's trial counts, hypervolume and Pareto front (or list the studies in a storage).")
    add_status_arguments(p)

    p = add("report", cmd_report, "write the interactive HTML report of a study",
            "Write one self-contained HTML file (works offline): the Pareto front with selectable axes\n"
            "and per-layer configs on hover, hypervolume history, per-layer views of the Pareto configs,\n"
            "operations per layer, objective importances and a sortable trials table.")
    _add_study_args(p)
    p.add_argument("--out", type=Path, default=None, help="HTML file to write (default RUN_DIR/STUDY/report.html)")
    p.add_argument("--images", nargs="*", default=[], choices=["png", "svg", "pdf"],
                   help="also write static images of the main plots (needs Chromium for kaleido)")

    p = add("trials", cmd_trials, "export a study's trials as a table",
            "One row per trial: state, objective values, feasibility, Pareto membership, per-layer\n"
            "parameters, operation counts, timing and worker.")
    _add_study_args(p)
    p.add_argument("--format", choices=["csv", "parquet", "json"], default=None,
                   help="table format (default: from --out's suffix, csv when printing)")
    p.add_argument("--out", type=Path, default=None, help="file to write (default: print CSV/JSON to stdout)")

    p = add("compare", cmd_compare, "overlay the Pareto fronts of several studies",
            "Overlay the fronts of several studies with the same objectives in one HTML plot, e.g.\n"
            "the spatial-only, temporal-only, quantization-only and joint searches.")
    _add_study_args(p, many=True)
    p.add_argument("--labels", nargs="+", default=None, help="legend label per study (default: study names)")
    p.add_argument("--out", type=Path, default=Path("runs/compare.html"), help="HTML file to write (default runs/compare.html)")

    p = add("export", cmd_export, "export trials as config + packed checkpoint + re-measured metrics",
            "Export one trial (--trial N), every Pareto point (--pareto) or the best trial under a budget\n"
            "(--max-sops X and/or --min-metric Y) as folders holding config.yaml, a packed safetensors\n"
            "model loadable with from_pretrained, and metrics re-measured now. Exits non-zero when a\n"
            "re-measured value differs from the search-time value beyond the stated tolerance.")
    _add_study_args(p)
    p.add_argument("--trial", type=int, default=None, help="export this trial number")
    p.add_argument("--pareto", action="store_true", help="export every trial on the Pareto front")
    p.add_argument("--max-sops", type=float, default=None, help="budget: at most this many synaptic ops per example")
    p.add_argument("--min-metric", type=float, default=None, help="budget: at least this task metric")
    p.add_argument("--out", type=Path, default=None, help="export folder (default RUN_DIR/STUDY/export)")
    p.add_argument("--prepared", type=Path, default=None, help="prepared base (default: the one the study recorded)")
    p.add_argument("--overwrite", action="store_true", help="replace existing exports of the same trials")
    p.add_argument("--glue-dir", default=os.environ.get("SPIKEPRUNE_GLUE_DIR"),
                   help="local GLUE folder (default: the one recorded when the base was prepared)")

    p = add("dashboard", cmd_dashboard, "serve optuna-dashboard on a study's storage",
            "Start optuna-dashboard on the study's storage. It listens on 127.0.0.1 unless --host says\n"
            "otherwise.")
    _add_study_args(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8080, help="port (default 8080)")

    p = add("demo", cmd_demo, "run the main job on the embedded defaults",
            "The whole job on the embedded default storage: prepare a teacher and a spiking student\n"
            "(cached after the first run), run a joint search on 2 local Ray workers, write the report\n"
            "and export the config with the fewest synaptic operations whose metric is within\n"
            "--max-drop of the uncompressed student, then print where each result is.")
    _add_prepare_args(p)
    _add_data_args(p)
    p.add_argument("--space", default="joint", help="search space preset or YAML file (default joint)")
    p.add_argument("--n-trials", type=int, default=16, help="complete trials to run (default 16)")
    p.add_argument("--workers", type=int, default=2, help="trials in flight on local Ray workers (default 2)")
    p.add_argument("--max-drop", type=float, default=0.01,
                   help="budget for the export: largest metric drop from the uncompressed student (default 0.01)")
    return parser


def _version() -> str:
    from spikeprune import __version__

    return __version__


def main(argv: Sequence[str] | None = None) -> int:
    from spikeprune.search.cli import run_handler

    parser = build_parser()
    args = parser.parse_args(argv)
    return run_handler(args.handler, args)


if __name__ == "__main__":
    sys.exit(main())
