"""Make a time-elastic base from a prepared converted base, with no training.

Copies the prepared folder (teacher, importance scores, records) to ``--out`` and replaces its
student by ``elastic_from_converted``'s: the same weights, and a θ table for every T = 1..16
chosen by least squared error on ``--calibration`` training sentences. The result is a prepared
base like any other (``spikeprune evaluate``, searches, the benchmarks).

    python benchmarks/elastic_base.py --prepared runs/prepared/sst2-quick --out runs/prepared/sst2-elastic
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402,F401  (first: it sets the OpenMP wait policy before torch loads)

from bench_levels import calibration_batches  # noqa: E402
from spikeprune import BaseBundle, PreparedRecord  # noqa: E402
from spikeprune.training import elastic_from_converted  # noqa: E402


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(prog="benchmarks/elastic_base.py", description=__doc__.splitlines()[0])
    p.add_argument("--prepared", type=Path, required=True, help="a prepared converted base")
    p.add_argument("--out", type=Path, required=True, help="folder of the elastic base (must not exist)")
    p.add_argument("--glue-dir", default=None, help="GLUE folder (default: the one the base recorded)")
    p.add_argument("--calibration", type=int, default=256, help="training sentences for the θ table (default 256)")
    args = p.parse_args(argv)
    if args.out.exists():
        raise SystemExit(f"error: {args.out} exists; pick a new --out folder")
    record = PreparedRecord.read(args.prepared)
    base = BaseBundle.load(args.prepared, args.glue_dir)
    if base.student.config.family != "converted":
        raise SystemExit(f"error: {args.prepared} is a {base.student.config.family} base; pass a converted one")
    start = time.perf_counter()
    batches = calibration_batches(base, record, args.calibration)
    elastic = elastic_from_converted(base.student, batches, progress=lambda t: print(
        f"θ table row T={t} ({time.perf_counter() - start:.0f} s)", flush=True))
    staging = args.out.with_name(args.out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(args.prepared, staging)
    elastic.save_pretrained(staging / "student")
    staging.rename(args.out)
    print(f"wrote {args.out} in {time.perf_counter() - start:.0f} s")
    return args.out


if __name__ == "__main__":
    main()
