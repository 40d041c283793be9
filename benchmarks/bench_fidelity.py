"""How faithful is a prepared base: teacher against spiking student at T = 1, 2, 4, 8, 16.

For each prepared base (any task, either family): the teacher's dev metric (from its
prepare.json), the majority class, and the student's metric with every layer at T steps (the
trial kernel with only ``timesteps`` changed, the full dev set unless --max-examples), with the
attention context's firing rate, so a dead attention path shows. One table row per base and T.

    python benchmarks/bench_fidelity.py --prepared runs/prepared/sst2-quick --prepared runs/prepared/mrpc-quick
"""
from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402  (first: it sets the OpenMP wait policy before torch loads)

import numpy as np  # noqa: E402

from spikeprune import BaseBundle, CompressionConfig, PreparedRecord, run_trial  # noqa: E402
from spikeprune._model.metrics import main_metric  # noqa: E402

STEPS = (1, 2, 4, 8, 16)


def majority(base: BaseBundle, examples: int) -> dict[str, float]:
    """Metrics of always answering the most frequent dev label (the mean score for regression)."""
    from spikeprune._model.metrics import compute_metrics

    labels = np.array(base.dev["labels"][:examples])
    if base.student.config.is_regression:
        guess = np.full(len(labels), labels.mean())
    else:
        guess = np.full(len(labels), Counter(labels.tolist()).most_common(1)[0][0])
    return compute_metrics(base.task, guess, labels)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="benchmarks/bench_fidelity.py", description=__doc__.splitlines()[0])
    p.add_argument("--prepared", type=Path, action="append", required=True, help="a prepared base (repeatable)")
    p.add_argument("--glue-dir", default=None, help="GLUE folder (default: the one each base recorded)")
    p.add_argument("--steps", type=int, nargs="+", default=list(STEPS), help="uniform timesteps (default 1 2 4 8 16)")
    p.add_argument("--max-examples", type=int, default=None, help="first N dev examples only")
    p.add_argument("--out", type=Path, default=Path("runs/benchmarks/bench_fidelity.json"))
    args = p.parse_args(argv)
    rows, figures = [], {"bases": []}
    for prepared in args.prepared:
        record = PreparedRecord.read(prepared)
        base = BaseBundle.load(prepared, args.glue_dir)
        name, cfg = main_metric(base.task), base.student.config
        examples = min(args.max_examples or base.dev_size, base.dev_size)
        entry = {"prepared": str(prepared), "task": base.task, "family": cfg.family, "metric": name,
                 "teacher": record.teacher_metrics, "majority": majority(base, examples),
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
    benchlib.write_json(args.out, figures)
    print(f"wrote {args.out}")
    return figures


if __name__ == "__main__":
    main()
