"""The search-space file: what the search may change, what it optimises and under which limits.

A space is a YAML mapping (read with ``yaml.safe_load``, validated here, every error one line
naming the field). Each compression knob (``heads``, ``neurons``, ``timesteps``, ``weight_bits``)
is either

- left out: as in the base model,
- fixed: a number for every layer, or a list with one number per layer,
- searched: ``{min, max, step}`` (integers) or ``{choices: [...]}``, with ``per_layer: true`` for one
  Optuna parameter per layer (``heads_l0``, ``heads_l1``, ...) or ``false`` (the default) for one
  value shared by all layers (``heads``).

``recovery_steps`` is a fixed number or ``{choices: [...]}``. ``objectives`` lists ``{name,
direction}`` pairs from :data:`OBJECTIVES`; ``constraints`` holds a floor on the metric
(``metric_min``) and caps on costs (``sops_max``, ``energy_uj_max``, ...); ``energy`` names an
energy preset; ``early_stopping`` sets the Pareto-aware early stop of the search (fraction of the
dev set for the first look, the metric margin by which a trial must be beaten to stop, and the
fractions of later looks, which stop a trial that cannot reach the metric floor or that a fully
evaluated trial outruns);
``reference`` gives the worst value hypervolume counts per objective (``{metric: -0.5}``), which
is otherwise derived from the dense baseline (``spikeprune/pareto.py``); ``sampler`` names the
sampler its searches use unless ``--sampler`` names another (``knobs.SAMPLERS``); ``importance``
names the score that picks which heads and neurons a config keeps (``grad``, the default, or
``activity``).

Timesteps may go above the base model's T: the model was trained on equilibrium rates, so more
steps are legal (a finer rate), just more expensive; the shipped presets stay at or below T.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from collections.abc import Mapping
from typing import Any

import yaml

from spikeprune.models._config import CompressionConfig, SpikingBertConfig
from spikeprune.errors import SpikepruneError
from spikeprune.objectives import METRIC, OBJECTIVES, Objective, parse_reference

from spikeprune.spaces._knobs import EarlyStopping, Knob, check_keys, parse_importance, parse_number, parse_sampler

#: Constraint key -> the objective it limits: a floor for the metric, caps for costs.
CONSTRAINTS: dict[str, str] = {"metric_min": METRIC, **{f"{k}_max": k for k in OBJECTIVES if k != METRIC}}
#: Compression knobs in the order of CompressionConfig; the last is not per layer.
KNOBS: tuple[str, ...] = ("heads", "neurons", "timesteps", "weight_bits", "recovery_steps")
TOP_KEYS: tuple[str, ...] = ("name", "description", *KNOBS, "objectives", "constraints", "energy", "early_stopping",
                             "reference", "sampler", "importance")
DEFAULT_OBJECTIVES: tuple[str, ...] = (METRIC, "sops")
DEFAULT_ENERGY = "float45nm"
#: Levels of the uniform seed configs: how far from the most compressed value towards the base.
SEED_LEVELS: tuple[float, ...] = (0.75, 0.5, 0.25)


@dataclass
class SearchSpace:
    """A validated search space; see the module docstring for the file format."""

    name: str = "custom"
    description: str = ""
    knobs: dict[str, Knob] = field(default_factory=lambda: {k: Knob(k) for k in KNOBS})
    objectives: list[Objective] = field(default_factory=lambda: [Objective(n, OBJECTIVES[n]) for n in DEFAULT_OBJECTIVES])
    constraints: dict[str, float] = field(default_factory=dict)
    energy: str = DEFAULT_ENERGY
    early_stopping: EarlyStopping | None = None
    #: Worst values hypervolume counts, by objective (default: derived from the baseline or trials).
    reference: dict[str, float] = field(default_factory=dict)
    #: The sampler its searches use unless the command line names one (None: ``DEFAULT_SAMPLER``).
    sampler: str | None = None
    #: The importance score that ranks heads and neurons for pruning (stored with the study, so a
    #: resume and an export prune alike).
    importance: str = "grad"
    #: Layer count of the model the space was last checked against; per-layer knobs need it.
    num_layers: int | None = field(default=None, compare=False)
    #: Where the space was read from ("preset joint", a path), to prefix model-check errors.
    source: str = field(default="", compare=False)

    # ------------------------------------------------------------------------------ loading
    @classmethod
    def load(cls, source: str | Path) -> "SearchSpace":
        """Load a space from a YAML file, or a shipped preset by name ("joint", "spatial", ...)."""
        path = Path(source)
        if path.is_file():
            text, label = path.read_text(), str(path)
        elif str(source) in preset_names():
            text, label = (resources.files(__package__) / "presets" / f"{source}.yaml").read_text(), f"preset {source}"
        else:
            raise SpikepruneError(f"search space {source!s} is neither a file nor a preset; "
                                  f"presets are {', '.join(preset_names())}")
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            line = f" line {mark.line + 1}" if mark else ""
            raise SpikepruneError(f"{label}:{line} is not valid YAML ({getattr(e, 'problem', e)})") from None
        try:
            space = cls.from_dict(data)
        except SpikepruneError as e:
            raise SpikepruneError(f"{label}: {e}") from None
        if space.name == "custom" and path.is_file():
            space.name = path.stem
        space.source = label
        return space

    @classmethod
    def from_dict(cls, data: Any) -> "SearchSpace":
        if not isinstance(data, dict):
            raise SpikepruneError("space: the file must hold a mapping of fields (heads, neurons, objectives, ...)")
        check_keys("space", data, TOP_KEYS)
        name, description = data.get("name", "custom"), data.get("description", "")
        if not isinstance(name, str) or not isinstance(description, str):
            raise SpikepruneError("space.name and space.description must be text")
        knobs = {k: Knob.parse(k, data.get(k)) for k in KNOBS}
        energy = data.get("energy", DEFAULT_ENERGY)
        if not isinstance(energy, str):
            raise SpikepruneError(f"space.energy: {energy!r} must be the name of an energy preset")
        objectives = _parse_objectives(data.get("objectives"))
        return cls(name=name, description=description.strip(), knobs=knobs, objectives=objectives,
                   constraints=_parse_constraints(data.get("constraints")), energy=energy,
                   early_stopping=EarlyStopping.parse(data.get("early_stopping")),
                   reference=parse_reference(data.get("reference"), objectives, "space.reference"),
                   sampler=parse_sampler(data.get("sampler")), importance=parse_importance(data.get("importance")))

    def to_dict(self) -> dict[str, Any]:
        """Plain data that ``from_dict`` reads back (stored with the study)."""
        out: dict[str, Any] = {"name": self.name, "description": self.description}
        out.update({k: knob.to_dict() for k, knob in self.knobs.items() if knob.fixed is not None or knob.searched})
        out["objectives"] = [{"name": o.name, "direction": o.direction} for o in self.objectives]
        out["constraints"] = dict(self.constraints)
        out["energy"] = self.energy
        es = self.early_stopping
        out["early_stopping"] = {"fraction": es.fraction, "margin": es.margin, "later": list(es.later)} if es else False
        if self.reference:
            out["reference"] = dict(self.reference)
        if self.sampler:
            out["sampler"] = self.sampler
        if self.importance != "grad":   # spaces stored before the field existed read back equal
            out["importance"] = self.importance
        return out

    # --------------------------------------------------------------------- model checking
    def check(self, model: SpikingBertConfig) -> "SearchSpace":
        """Fail before any trial runs if the space asks for more than ``model`` has; remember
        the model's layer count so ``suggest`` can name per-layer parameters."""
        try:
            self._check(model)
        except SpikepruneError as e:
            raise SpikepruneError(f"{self.source}: {e}" if self.source else str(e)) from None
        self.num_layers = model.num_layers
        return self

    def _check(self, model: SpikingBertConfig) -> None:
        limits = {"heads": ("heads", model.heads), "neurons": ("FFN neurons", model.intermediate_sizes)}
        for name, knob in self.knobs.items():
            where = f"space.{name}"
            if isinstance(knob.fixed, tuple) and len(knob.fixed) != model.num_layers:
                raise SpikepruneError(f"{where}: {len(knob.fixed)} values but the model has {model.num_layers} layers; "
                                      f"give one per layer or a single number")
            if name not in limits or not knob.values():
                continue
            what, per_layer = limits[name]
            top = max(knob.values())
            field_name = where + (".max" if knob.low is not None else ".choices" if knob.choices else "")
            if isinstance(knob.fixed, tuple):
                for l, (v, cap) in enumerate(zip(knob.fixed, per_layer)):
                    if v > cap:
                        raise SpikepruneError(f"{where}[{l}]: {v} but the model's layer {l} has {cap} {what}")
            elif len(set(per_layer)) == 1 and top > per_layer[0]:
                raise SpikepruneError(f"{field_name}: {top} but the model has {per_layer[0]} {what} per layer")
            elif top > min(per_layer):
                l = per_layer.index(min(per_layer))
                raise SpikepruneError(f"{field_name}: {top} but the model's layer {l} has {per_layer[l]} {what}")
        _check_energy(self.energy)

    # ------------------------------------------------------------------------- sampling
    def suggest(self, trial: Any) -> CompressionConfig:
        """Draw a CompressionConfig with Optuna's suggest API (stable names: heads_l0 or heads)."""
        out: dict[str, Any] = {}
        for name, knob in self.knobs.items():
            if not knob.searched:
                out[name] = list(knob.fixed) if isinstance(knob.fixed, tuple) else knob.fixed
                continue
            if knob.per_layer and self.num_layers is None:
                raise SpikepruneError(f"space.{name} is per layer: call space.check(model_config) before suggest")
            drawn = [trial.suggest_categorical(p, list(knob.choices)) if knob.choices is not None
                     else trial.suggest_int(p, knob.low, knob.high, step=knob.step)
                     for p in knob.param_names(self.num_layers or 1)]
            out[name] = drawn if knob.per_layer else drawn[0]
        if out["recovery_steps"] is None:
            out["recovery_steps"] = 0
        return CompressionConfig(**out)

    def params(self, config: CompressionConfig, model: SpikingBertConfig) -> dict[str, Any]:
        """Optuna params (for ``study.enqueue_trial``) that make ``suggest`` return ``config``."""
        resolved = config.resolve(model)
        params: dict[str, Any] = {}
        for name, knob in self.knobs.items():
            values = getattr(resolved, name)
            values = values if isinstance(values, list) else [values]
            if not knob.searched:
                expected = resolved_fixed(knob, model)
                if expected is not None and values != expected:
                    raise SpikepruneError(f"{name}={values} but the space fixes it to {expected}")
                continue
            allowed = knob.values()
            for v in values:
                if v not in allowed:
                    raise SpikepruneError(f"{name}={v:g} is outside space.{name} (allowed: {', '.join(f'{a:g}' for a in allowed)})")
            if knob.per_layer:
                params.update(zip(knob.param_names(model.num_layers), values))
            elif len(set(values)) > 1:
                raise SpikepruneError(f"{name}={values} differs per layer but space.{name} is shared (per_layer: false)")
            else:
                params[name] = values[0]
        return params

    def seed_configs(self, model: SpikingBertConfig) -> list[CompressionConfig]:
        """The in-space point nearest the dense model first, then uniform configs at a few levels.

        Each knob's values are sorted by cost; level q takes the value q of the way from the
        cheapest to the baseline's. All layers get the same value, the recovery budget its least.
        """
        self.check(model)
        base_values = {"heads": min(model.heads), "neurons": min(model.intermediate_sizes),
                       "timesteps": max(model.timesteps), "weight_bits": max(model.weight_bits), "recovery_steps": 0}
        baseline: dict[str, Any] = {}
        for name, knob in self.knobs.items():
            if knob.searched:
                baseline[name] = min(knob.values(), key=lambda v: (abs(v - base_values[name]), -v))
            else:
                baseline[name] = list(knob.fixed) if isinstance(knob.fixed, tuple) else knob.fixed
        seeds = [CompressionConfig(**{**baseline, "recovery_steps": baseline["recovery_steps"] or 0})]
        for level in SEED_LEVELS:
            point = dict(baseline)
            for name, knob in self.knobs.items():
                if knob.searched and name != "recovery_steps":
                    below = [v for v in knob.values() if v <= baseline[name]]
                    point[name] = below[int(level * (len(below) - 1) + 0.5)]
            config = CompressionConfig(**{**point, "recovery_steps": point["recovery_steps"] or 0})
            if config not in seeds:
                seeds.append(config)
        return seeds

    # ---------------------------------------------------------------------- scoring
    @property
    def directions(self) -> list[str]:
        return [o.direction for o in self.objectives]

    @property
    def objective_names(self) -> list[str]:
        return [o.name for o in self.objectives]

    def objective_values(self, measured: Mapping[str, float]) -> list[float]:
        """Trial values in objective order, from the trial function's ``TrialResult.objectives``."""
        return [float(_measured(measured, o.name)) for o in self.objectives]

    def constraint_values(self, measured: Mapping[str, float]) -> dict[str, float]:
        """Optuna constraint values by name (<= 0 feasible): the metric floor in metric units, cost
        caps relative to the cap (so violations in different units can be summed)."""
        out = {}
        for key, limit in self.constraints.items():
            value = float(_measured(measured, CONSTRAINTS[key]))
            out[key] = limit - value if key == "metric_min" else (value - limit) / limit
        return out


def resolved_fixed(knob: Knob, model: SpikingBertConfig) -> list | None:
    """A fixed knob's per-layer values (None when the knob is left to the base model)."""
    if knob.fixed is None or knob.name == "recovery_steps":
        return None if knob.fixed is None else [knob.fixed]
    return list(knob.fixed) if isinstance(knob.fixed, tuple) else [knob.fixed] * model.num_layers


def _measured(measured: Mapping[str, float], name: str) -> float:
    if name not in measured:
        raise SpikepruneError(f"the trial result has no {name!r}; it measured {', '.join(measured)}")
    return measured[name]


def _parse_objectives(raw: Any) -> list[Objective]:
    where = "space.objectives"
    if raw is None:
        return [Objective(n, OBJECTIVES[n]) for n in DEFAULT_OBJECTIVES]
    if not isinstance(raw, list) or not raw:
        raise SpikepruneError(f"{where}: give a non-empty list like [{{name: metric, direction: maximize}}, {{name: sops, direction: minimize}}]")
    out: list[Objective] = []
    for i, item in enumerate(raw):
        w = f"{where}[{i}]"
        if isinstance(item, str):
            item = {"name": item}
        if not isinstance(item, dict):
            raise SpikepruneError(f"{w}: give {{name: ..., direction: ...}}")
        check_keys(w, item, ("name", "direction"))
        name = item.get("name")
        if name not in OBJECTIVES:
            raise SpikepruneError(f"{w}.name: {name!r} is not an objective; use one of {', '.join(OBJECTIVES)}")
        direction = item.get("direction", OBJECTIVES[name])
        if direction != OBJECTIVES[name]:
            raise SpikepruneError(f"{w}.direction: {name} must be {OBJECTIVES[name]}d, not {direction!r}")
        if any(o.name == name for o in out):
            raise SpikepruneError(f"{w}.name: {name} is listed twice")
        out.append(Objective(name, direction))
    return out


def _parse_constraints(raw: Any) -> dict[str, float]:
    where = "space.constraints"
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise SpikepruneError(f"{where}: give a mapping like {{metric_min: 0.8, sops_max: 2.0e7}}")
    check_keys(where, raw, tuple(CONSTRAINTS))
    out = {k: parse_number(f"{where}.{k}", v) for k, v in raw.items()}
    for k, v in out.items():
        if k != "metric_min" and v <= 0:
            raise SpikepruneError(f"{where}.{k}: {v:g} must be > 0 (a cap on a cost)")
    return out


def _check_energy(name: str) -> None:
    from spikeprune.costs._ops import resolve_energy  # the op counter owns the energy presets

    try:
        resolve_energy(name)
    except SpikepruneError as e:
        raise SpikepruneError(f"space.energy: {e}") from None


def preset_names() -> list[str]:
    """Names of the shipped space presets (spaces/presets/*.yaml)."""
    folder = resources.files(__package__) / "presets"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))
