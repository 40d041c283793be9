"""One config per compression axis on a prepared base: the README's compression table.

Runs the trial function (the same one the search uses) on the whole dev set for the dense student,
heads-only, neurons-only, timesteps-only and bits-only compression and one joint config, and prints
metric, synaptic operations, energy (float45nm and int45nm) and Σ T per example.

    python benchmarks/compression_table.py --prepared runs/prepared/sst2-quick
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402  (first: it sets the OpenMP wait policy before torch loads)

from spikeprune.models import CompressionConfig, SpikingBertConfig  # noqa: E402
from spikeprune.costs import count_ops  # noqa: E402
from spikeprune.trial import BaseBundle
from spikeprune.trial import build_compressed, measure  # noqa: E402

def configs(model: SpikingBertConfig) -> dict[str, CompressionConfig]:
    """Halve one axis at a time (joint: three quarters of each, T-1, 8-bit), from the model's own sizes."""
    h, m, t = max(model.heads), max(model.intermediate_sizes), max(model.timesteps)
    return {
        "dense": CompressionConfig(),
        f"heads only ({max(1, h // 2)} of {h})": CompressionConfig(heads=max(1, h // 2)),
        f"neurons only ({m // 2} of {m})": CompressionConfig(neurons=m // 2),
        f"timesteps only (T={max(1, t // 2)} of {t})": CompressionConfig(timesteps=max(1, t // 2)),
        "bits only (4-bit)": CompressionConfig(weight_bits=4),
        f"joint ({3 * h // 4} heads, {3 * m // 4} neurons, T={max(1, t - 1)}, 8-bit)":
            CompressionConfig(heads=max(1, 3 * h // 4), neurons=3 * m // 4, timesteps=max(1, t - 1), weight_bits=8),
    }


def main(argv: list[str] | None = None) -> dict:
    args = benchlib.trial_parser("compression_table", __doc__.splitlines()[0]).parse_args(argv)

    base = BaseBundle.load(args.prepared, args.glue_dir)
    rows = {}
    print(f"{'config':48s} {'metric':>7s} {'95% CI':>15s} {'SOPs':>10s} {'E float µJ':>10s} {'E int µJ':>9s} {'ΣT':>3s}")
    for name, config in configs(base.student.config).items():
        model, resolved, timing = build_compressed(base, config)
        result = measure(base, model, resolved, timing, max_examples=args.max_examples)
        # The same spikes under the bit-width-aware preset: only the energy model differs.
        spikes = result.report
        int_energy = count_ops(model.config, result.record, "int45nm").energy_uj
        lo, hi = result.metric_ci
        rows[name] = {"metric": result.metrics["metric"], "ci": [lo, hi], "sops": spikes.sops,
                      "energy_uj_float45nm": spikes.energy_uj, "energy_uj_int45nm": int_energy,
                      "sum_t": spikes.sum_t, "compression": resolved.to_dict(), "examples": result.examples}
        print(f"{name:48s} {result.metrics['metric']:7.4f} {lo:7.4f}..{hi:6.4f} {spikes.sops:10.4g} "
              f"{spikes.energy_uj:10.3f} {int_energy:9.3f} {spikes.sum_t:3d}", flush=True)
    benchlib.write_json(args.out, rows)
    print(f"wrote {args.out}")
    return rows


if __name__ == "__main__":
    main()
