"""What a converted base's quantized network keeps, with no training: weight widths and levels.

Two tables on the dev set, both on the quantized network the spikes converge to (the surrogate
mode, seconds per pass):

- ``--bits``: every layer's encoder Linear weights at 2, 4 and 8 bits (per-channel scales,
  clipping by least squared error) against the float weights, so each width can be checked
  against the next narrower one.
- ``--levels``: the spike value following the timesteps (design A of the elastic base): every
  population quantized to 2T+1 levels with θ re-chosen by least squared error on
  ``--calibration`` training sentences (``relevel``), for T = 1, 2, 4, 8, 16. With one signed
  spike per step a neuron reaches exactly these levels in T steps, so this bounds what per-layer
  T can keep before any elastic training.

    python benchmarks/bench_levels.py --prepared runs/prepared/sst2-quick --bits 2 4 8 --levels 1 2 4 8 16
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402  (first: it sets the OpenMP wait policy before torch loads)

from spikeprune import BaseBundle, PreparedRecord  # noqa: E402
from spikeprune.data import batches, encode, get_task, load_glue, main_metric  # noqa: E402
from spikeprune.models import evaluate_model, quantize_model  # noqa: E402
from spikeprune.training import relevel  # noqa: E402


def calibration_batches(base: BaseBundle, record: PreparedRecord, examples: int) -> list:
    """``examples`` seeded training sentences of the base's task, tokenised like its dev set."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base.prepared / "student")
    split = load_glue(base.task, "train", base.glue_dir).subset(examples, seed=0)
    return list(batches(encode(split, tokenizer, record.max_length), 32, sort_by_length=True, pad_id=base.pad_id))


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="benchmarks/bench_levels.py", description=__doc__.splitlines()[0])
    p.add_argument("--prepared", type=Path, required=True, help="a prepared converted base")
    p.add_argument("--glue-dir", default=None, help="GLUE folder (default: the one the base recorded)")
    p.add_argument("--bits", type=float, nargs="*", default=[2, 4, 8], help="uniform weight widths (default 2 4 8)")
    p.add_argument("--levels", type=int, nargs="*", default=[1, 2, 4, 8, 16],
                   help="levels per side = timesteps under design A (default 1 2 4 8 16)")
    p.add_argument("--calibration", type=int, default=256, help="training sentences for relevel (default 256)")
    p.add_argument("--max-examples", type=int, default=None, help="first N dev examples only")
    p.add_argument("--out", type=Path, default=Path("runs/benchmarks/bench_levels.json"))
    args = p.parse_args(argv)

    record = PreparedRecord.read(args.prepared)
    base = BaseBundle.load(args.prepared, args.glue_dir)
    student, name = base.student, main_metric(base.task)
    if student.config.family != "converted":
        raise SystemExit(f"error: {args.prepared} is a {student.config.family} base; pass a converted one")
    teacher = record.teacher_metrics[name]

    def score(model) -> tuple[float, float]:
        start = time.perf_counter()
        metrics = evaluate_model(model, base.dev_batches(args.max_examples), base.task, mode="surrogate").metrics
        return metrics[name], time.perf_counter() - start

    rows, figures = [], {"prepared": str(args.prepared), "task": base.task, "metric": name, "teacher": teacher,
                         "levels_trained": student.config.levels, "bits": {}, "levels": {}}
    metric, seconds = score(student)
    figures["float"] = metric
    rows.append(["float weights", str(student.config.levels), f"{metric:.4f}", f"{metric - teacher:+.4f}", f"{seconds:.0f}"])
    print(rows[-1], flush=True)
    for bits in args.bits:
        metric, seconds = score(quantize_model(student, bits))
        figures["bits"][f"{bits:g}"] = metric
        rows.append([f"{bits:g}-bit weights", str(student.config.levels), f"{metric:.4f}", f"{metric - teacher:+.4f}",
                     f"{seconds:.0f}"])
        print(rows[-1], flush=True)
    if args.levels:
        calibration = calibration_batches(base, record, args.calibration)
    for levels in args.levels:
        metric, seconds = score(relevel(student, calibration, levels))
        figures["levels"][str(levels)] = metric
        rows.append(["float weights, relevelled", str(levels), f"{metric:.4f}", f"{metric - teacher:+.4f}", f"{seconds:.0f}"])
        print(rows[-1], flush=True)
    print(f"{base.task} dev, {args.max_examples or base.dev_size} examples; teacher {name} {teacher:.4f}")
    print(benchlib.table(["quantized network", "levels per side", name, "vs teacher", "eval s"], rows))
    benchlib.write_json(args.out, figures)
    print(f"wrote {args.out}")
    return figures


if __name__ == "__main__":
    main()
