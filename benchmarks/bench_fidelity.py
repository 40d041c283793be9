"""How faithful is a prepared base: teacher against spiking student at T = 1, 2, 4, 8, 16.

For each prepared base (any task, either family): the teacher's dev metric (from its
prepare.json), the majority class, and the student's metric with every layer at T steps (the
trial function with only ``timesteps`` changed, the full dev set unless --max-examples), with the
attention context's firing rate, so a dead attention path shows. One table row per base and T.

``--quantization-loss`` asks where a converted base loses accuracy instead: its quantized network
(what enough steps converge to, the surrogate mode) evaluated with groups of populations left in
float, one row per group.

    python benchmarks/bench_fidelity.py --prepared runs/prepared/sst2-quick --prepared runs/prepared/mrpc-quick
    python benchmarks/bench_fidelity.py --prepared runs/prepared/sst2-quick --quantization-loss
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402  (first: it sets the OpenMP wait policy before torch loads)

import numpy as np  # noqa: E402

from spikeprune import BaseBundle, CompressionConfig, PreparedRecord, run_trial  # noqa: E402
from spikeprune.models import FAMILIES  # noqa: E402
from spikeprune.models import evaluate_model  # noqa: E402
from spikeprune.data import main_metric  # noqa: E402

CONVERTED = FAMILIES["converted"]
STEPS = (1, 2, 4, 8, 16)
#: Groups of populations left in float by --quantization-loss ("residual": the hidden-width ones).
FLOAT_GROUPS: dict[str, tuple[str, ...]] = {
    "none": (), "all": ("encoder", *CONVERTED.populations), "residual": ("encoder", *CONVERTED.residual),
    **{name: (name,) for name in ("encoder", *CONVERTED.populations)}, "query+key+value": ("query", "key", "value")}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="benchmarks/bench_fidelity.py", description=__doc__.splitlines()[0])
    p.add_argument("--prepared", type=Path, action="append", required=True, help="a prepared base (repeatable)")
    p.add_argument("--glue-dir", default=None, help="GLUE folder (default: the one each base recorded)")
    p.add_argument("--steps", type=int, nargs="+", default=list(STEPS), help="uniform timesteps (default 1 2 4 8 16)")
    p.add_argument("--max-examples", type=int, default=None, help="first N dev examples only")
    p.add_argument("--quantization-loss", action="store_true",
                   help="the quantized network with groups of populations in float, instead of the T table")
    p.add_argument("--out", type=Path, default=None,
                   help="JSON figures (default runs/benchmarks/bench_fidelity.json, or "
                        "bench_fidelity-quantization.json with --quantization-loss)")
    args = p.parse_args(argv)
    if args.quantization_loss:
        return quantization_loss(args)
    rows, figures = [], {"bases": []}
    for prepared in args.prepared:
        record = PreparedRecord.read(prepared)
        base = BaseBundle.load(prepared, args.glue_dir)
        name, cfg = main_metric(base.task), base.student.config
        examples = min(args.max_examples or base.dev_size, base.dev_size)
        entry = {"prepared": str(prepared), "task": base.task, "family": cfg.family, "metric": name,
                 "teacher": record.teacher_metrics, "majority": benchlib.majority(base, examples),
                 "base_timesteps": cfg.timesteps, "examples": examples, "students": []}
        for steps in args.steps:
            result = run_trial(base, CompressionConfig(timesteps=steps), max_examples=args.max_examples)
            context = float(np.mean([r["context"] for r in result.report.firing_rates]))
            entry["students"].append({"timesteps": steps, "metrics": result.metrics, "context_rate": context,
                                      "sops": result.report.sops, "energy_uj": result.report.energy_uj,
                                      "eval_s": result.timing["eval_s"]})
            rows.append([f"{base.task} {cfg.family}", str(steps), f"{record.teacher_metrics[name]:.4f}",
                         f"{entry['majority'][name]:.4f}", f"{result.metrics[name]:.4f}",
                         f"{result.metrics[name] - record.teacher_metrics[name]:+.4f}", f"{context:.4f}",
                         f"{result.report.sops:.3g}", f"{result.timing['eval_s']:.0f}"])
            print(rows[-1], flush=True)
        figures["bases"].append(entry)
    print(benchlib.table(["base", "T", "teacher", "majority", "student", "gap", "context rate", "SOPs", "eval s"], rows))
    out = args.out or Path("runs/benchmarks/bench_fidelity.json")
    benchlib.write_json(out, figures)
    print(f"wrote {out}")
    return figures


def quantization_loss(args: argparse.Namespace) -> dict:
    """The quantized network's metric with each group of FLOAT_GROUPS left in float."""
    rows, figures = [], {"bases": []}
    for prepared in args.prepared:
        record = PreparedRecord.read(prepared)
        base = BaseBundle.load(prepared, args.glue_dir)
        model, name = base.student, main_metric(base.task)
        if model.config.family != "converted":
            raise SystemExit(f"{prepared} is a {model.config.family} base; --quantization-loss needs a converted one")
        entry = {"prepared": str(prepared), "task": base.task, "metric": name, "teacher": record.teacher_metrics,
                 "residual_thresholds": model.config.residual_thresholds, "groups": {}}
        for group, populations in FLOAT_GROUPS.items():
            model.float_populations = frozenset(populations)
            metrics = evaluate_model(model, base.dev_batches(args.max_examples), base.task, mode="surrogate").metrics
            entry["groups"][group] = metrics
            rows.append([base.task, model.config.residual_thresholds, group, f"{record.teacher_metrics[name]:.4f}",
                         f"{metrics[name]:.4f}", f"{metrics[name] - record.teacher_metrics[name]:+.4f}"])
            print(rows[-1], flush=True)
        model.float_populations = frozenset()
        figures["bases"].append(entry)
    print(benchlib.table(["base", "residual θ", "in float", "teacher", "quantized network", "gap"], rows))
    out = args.out or Path("runs/benchmarks/bench_fidelity-quantization.json")
    benchlib.write_json(out, figures)
    print(f"wrote {out}")
    return figures


if __name__ == "__main__":
    main()
