"""The subcommands' handlers: each turns parsed arguments into calls of the public API
(``import spikeprune``) and prints what the user needs, so the command line does nothing that
Python cannot."""
from __future__ import annotations

import argparse
import json
import socket
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from spikeprune.errors import SpikepruneError

from spikeprune.cli.plumbing import open_study, output_file, output_folder, storage_for

if TYPE_CHECKING:
    from spikeprune import SearchSettings


def _prepare(args: argparse.Namespace) -> Path:
    """``prepare`` with the options of ``_add_prepare_args`` (the preset changed by any --set)."""
    from spikeprune import override_preset, prepare

    return prepare(args.task, args.glue_dir, args.run_dir, preset=override_preset(args.preset, args.overrides, args.task),
                   base=args.base, device=args.device, seed=args.seed)


def cmd_prepare(args: argparse.Namespace) -> int:
    print(f"prepared base: {_prepare(args)}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from spikeprune import BaseBundle, CompressionConfig, format_ann, format_report, run_trial

    output_file(args.json, "--json")
    compression = CompressionConfig.load(args.config) if args.config else CompressionConfig()
    base = BaseBundle.load(args.prepared, glue_dir=args.glue_dir)
    result = run_trial(base, compression, max_examples=args.max_examples,
                       seed=args.seed, energy=args.energy)
    print(format_report(result.report))
    print(format_ann(result.ann, result.report.energy_uj))
    metrics = ", ".join(f"{k} {v:.4f}" for k, v in result.metrics.items())
    lo, hi = result.metric_ci
    print(f"{base.task} dev ({result.examples} examples): {metrics} (95% CI {lo:.4f}..{hi:.4f})")
    print("time: " + ", ".join(f"{k} {v:.2f}s" for k, v in result.timing.items()))
    if args.json:
        args.json.write_text(json.dumps(result.to_dict(), indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


def cmd_profile(args: argparse.Namespace) -> int:
    from spikeprune import BaseBundle, SearchSpace, compute_profile

    space = SearchSpace.load(args.space)
    base = BaseBundle.load(args.prepared, glue_dir=args.glue_dir)
    _, profile = compute_profile(base, space.check(base.student.config), examples=args.examples)
    print(f"sensitivity of {args.prepared} (dense metric {profile.base_metric:.4f} on {profile.examples} examples; "
          f"{len(profile.results)} probes, {profile.seconds:.0f} s):")
    print(f"  {'knob':<12} {'layer':>5} {'value':>7} {'drop':>8} {'flips':>6}")
    for r in profile.results:
        layer = "all" if r.probe.layer is None else str(r.probe.layer)
        print(f"  {r.probe.knob:<12} {layer:>5} {r.probe.value:>7g} {r.drop:>+8.4f} {r.flips:>6.3f}")
    for t, (drop, flips) in sorted(profile.steps.items()):   # the uniform-T runs of the spike statistics
        print(f"  {'timesteps':<12} {'all':>5} {t:>7g} {drop:>+8.4f} {flips:>6.3f}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from spikeprune import write_report

    out = args.out or args.run_dir / args.study / "report.html"
    output_file(out, "--out")
    study = open_study(args, args.study)
    written = write_report(study, out, images=args.images)
    for path in written:
        print(f"wrote {path}")
    return 0


def cmd_trials(args: argparse.Namespace) -> int:
    from spikeprune import trials_frame, write_trials

    output_file(args.out, "--out")
    if args.out is None and args.format == "parquet":
        raise SpikepruneError("--format parquet is a binary file and cannot be printed; add --out trials.parquet")
    study = open_study(args, args.study)
    if args.out is None:
        frame = trials_frame(study)
        print(frame.to_json(orient="records", indent=1) if args.format == "json" else frame.to_csv(index=False))
        return 0
    print(f"wrote {write_trials(study, args.out, args.format)}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from spikeprune import compare_fronts

    output_file(args.out, "--out")
    studies = [open_study(args, name) for name in args.studies]
    print(f"wrote {compare_fronts(studies, args.out, labels=args.labels, relative_to_dense=args.relative, max_drop=args.max_drop)}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from spikeprune import StudyRecord, export_trial, select_trials

    output_folder(args.out or args.run_dir / args.study / "export", "--out")
    study = open_study(args, args.study)
    prepared = args.prepared or StudyRecord.read(study).prepared
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
        print(f"trial {trial.number} -> {result.folder} ({values}) {verdict}; {result.ann_text}")
        failed += not result.ok
    if failed:
        print(f"error: {failed} export(s) re-measured outside the tolerance", file=sys.stderr)
        return 1
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    from optuna_dashboard import run_server

    from spikeprune import open_storage

    storage = open_storage(storage_for(args, args.study))
    with socket.socket() as probe:  # a taken port is one line here, not a traceback in the server
        try:
            probe.bind((args.host, args.port))
        except OSError as e:
            raise SpikepruneError(f"cannot listen on {args.host}:{args.port} ({e.strerror}); pick another --port "
                                  f"or --host") from None
    print(f"optuna-dashboard for {args.study} on http://{args.host}:{args.port}/ (Ctrl-C to stop)")
    run_server(storage, host=args.host, port=args.port)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """The main job end to end: prepare (cached), search, report, export the best under a budget."""
    from spikeprune import SearchSettings, export_trial, find_baseline, run_search, select_trials, write_report

    start = time.perf_counter()
    prepared = _prepare(args)
    study_name = f"demo-{args.task}-{args.preset}"
    study = run_search(SearchSettings(prepared=prepared, space=args.space, study_name=study_name,
                                      n_trials=args.n_trials, workers=args.workers, run_dir=args.run_dir,
                                      seed=args.seed, glue_dir=args.glue_dir)).study
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
    print(f"against the ANN {export.ann_text}")
    print(f"export          {export.folder} ({'re-measured ok' if export.ok else 'MISMATCH: ' + '; '.join(export.problems)})")
    print(f"total time      {time.perf_counter() - start:.0f} s")
    return 0 if export.ok else 1


def settings_from_args(args: argparse.Namespace) -> "SearchSettings":
    from spikeprune import SearchSettings

    keys = ("prepared", "space", "task", "study_name", "n_trials", "workers", "storage", "run_dir", "sampler",
            "seed", "ray_address", "cpus_per_trial", "gpus_per_trial", "glue_dir", "energy", "max_examples",
            "early_stopping", "max_failures", "progress", "trial_timeout", "storage_patience", "trial_function", "reference",
            "profile_examples")
    return SearchSettings(**{k: getattr(args, k) for k in keys})


def cmd_search(args: argparse.Namespace) -> int:
    from spikeprune import run_search

    result = run_search(settings_from_args(args))
    if result.complete < args.n_trials and result.gave_up:  # say why, and fail the command
        print(f"error: the search stopped at {result.complete} of {args.n_trials} complete trials after "
              f"{args.max_failures} failed ones (--max-failures); `spikeprune trials {args.study_name}` shows their "
              f"errors, and rerunning the command resumes", file=sys.stderr)
        return 1
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from spikeprune import study_status

    print(study_status(storage_for(args, args.study), args.study))
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from spikeprune.search import check_storage

    result = check_storage(storage_for(args, args.study), args.study, repair=args.repair)
    print("\n".join(result.lines))
    return 0 if result.ok else 1
