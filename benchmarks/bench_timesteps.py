"""How cutting the timesteps of one layer compares with cutting all of them: the guided sampler's timestep rule.

The sensitivity profile does not probe timesteps layer by layer: it reads the uniform-T runs the
spike statistics already paid for and spreads them over the layers with a power mean
(``SensitivityProfile.timestep_score``, exponent ``TIMESTEP_POWER``). This script measures what
that rule replaces: on the first ``--max-examples`` dev examples (the trials' order), the dense
student simulated, then every layer alone and all layers at each T of ``--steps``. It prints the
predictions that changed from the dense model's (flips) and the mean absolute error of the rule
against every single-layer cut, next to the additive rule (each layer 1/L of the uniform cut).

    python benchmarks/bench_timesteps.py --prepared runs/prepared/sst2-quick
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402  (first: it sets the OpenMP wait policy before torch loads)

import numpy as np  # noqa: E402

from spikeprune import BaseBundle, CompressionConfig  # noqa: E402
from spikeprune.samplers import TIMESTEP_POWER, SensitivityProfile, dense_values, flip_rate  # noqa: E402
from spikeprune.data import get_task  # noqa: E402
from spikeprune.models import evaluate_model  # noqa: E402
from spikeprune.trial import build_compressed  # noqa: E402

NAME = "bench_timesteps"


def main(argv: list[str] | None = None) -> dict:
    p = benchlib.trial_parser(NAME, __doc__.splitlines()[0])
    p.add_argument("--steps", type=int, nargs="+", default=[12, 8, 4], help="cut T values (default 12 8 4)")
    p.set_defaults(max_examples=64)
    args = p.parse_args(argv)
    base = BaseBundle.load(args.prepared, args.glue_dir)
    cfg = base.student.config
    examples = min(args.max_examples, base.dev_size)
    dense = evaluate_model(base.student, base.dev_batches(examples), base.task)
    regression = get_task(base.task).is_regression
    top, layers = max(cfg.timesteps), cfg.num_layers

    def alone(t: int, layer: int) -> list[int]:
        """``layer`` at ``t`` steps, every other layer at the base's."""
        return [t if k == layer else top for k in range(layers)]

    def flips(timesteps: list[int]) -> tuple[float, float]:
        model, _, _ = build_compressed(base, CompressionConfig(timesteps=timesteps))
        ev = evaluate_model(model, base.dev_batches(examples), base.task)
        return float(ev.metrics["metric"]), flip_rate(regression, dense.predictions, ev.predictions)

    cuts: dict[int, dict[str, tuple[float, float]]] = {}
    for t in args.steps:
        cuts[t] = {"all": flips([t] * layers)}
        for l in range(layers):
            cuts[t][str(l)] = flips(alone(t, l))
        print(f"T={t}: " + ", ".join(f"{k} {v[1]:.3f}" for k, v in cuts[t].items()), flush=True)
    profile = SensitivityProfile(examples, float(dense.metrics["metric"]), dense_values(cfg),
                                 steps={t: (0.0, c["all"][1]) for t, c in cuts.items()})
    rows, errors = [], {"power": [], "additive": []}
    for t, c in cuts.items():
        uniform = c["all"][1]
        for l in range(layers):
            power, additive = profile.timestep_score(alone(t, l))[1], uniform / layers
            errors["power"].append(abs(power - c[str(l)][1]))
            errors["additive"].append(abs(additive - c[str(l)][1]))
        singles = [c[str(l)][1] for l in range(layers)]
        rows.append([str(t), f"{uniform:.3f}", " ".join(f"{v:.3f}" for v in singles),
                     f"{np.mean(singles) / uniform:.2f}" if uniform else "-"])
    print(f"\n{base.task}, {examples} dev examples, dense metric {dense.metrics['metric']:.4f} at T = {top}")
    print(benchlib.table(["T", "all layers", "one layer alone (0..L-1)", "mean alone / all"], rows))
    mae = {k: float(np.mean(v)) for k, v in errors.items()}
    print(f"mean absolute error in flips over {len(errors['power'])} single-layer cuts: power mean "
          f"(p = {TIMESTEP_POWER:g}) {mae['power']:.3f}, additive 1/L {mae['additive']:.3f}")
    figures = {"examples": examples, "dense_metric": float(dense.metrics["metric"]), "power": TIMESTEP_POWER,
               "cuts": {str(t): c for t, c in cuts.items()}, "mean_abs_error": mae}
    benchlib.write_json(args.out, figures)
    print(f"wrote {args.out}")
    return figures


if __name__ == "__main__":
    main()
