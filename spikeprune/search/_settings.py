"""What a search is asked to do: ``SearchSettings`` (the command line's options) and the samplers.

Light on purpose (no torch, no optuna at import), so the command line can describe and check
its options before loading anything heavy.
"""
from __future__ import annotations

import re
import secrets
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from spikeprune.spaces._knobs import SAMPLERS
from spikeprune.errors import SpikepruneError

if TYPE_CHECKING:
    import optuna

    from spikeprune.spaces._schema import SearchSpace

#: The trial function the workers run unless ``--trial-function`` names another (_worker.py).
DEFAULT_TRIAL_FUNCTION = "spikeprune:run_trial"
STUDY_NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}\Z")  # \Z: "$" would let a trailing newline in


def check_study_name(name: str) -> str:
    """Study names become folder names and database keys: keep them plain."""
    if not isinstance(name, str) or not STUDY_NAME.match(name) or name in (".", ".."):
        raise SpikepruneError(f"study name {name!r} is not allowed; use 1-64 letters, digits, '-', '_' or '.'")
    return name


@dataclass
class SearchSettings:
    """Everything a search needs; ``spikeprune search`` fills it from the command line."""

    prepared: str | Path
    space: str | Path | SearchSpace = "joint"
    task: str | None = None                 # checked against the prepared base when given
    study_name: str = "search"
    n_trials: int = 20                      # COMPLETE trials the study should hold
    workers: int = 2                        # evaluations in flight
    storage: str | None = None              # URL or journal path; default <run_dir>/<study>/journal.log
    run_dir: str | Path = "runs"
    sampler: str | None = None              # None: the space's sampler, else DEFAULT_SAMPLER (tpe)
    seed: int = 0
    ray_address: str | None = None          # an existing cluster; None starts a local one
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    glue_dir: str | Path | None = None
    energy: str | None = None               # overrides the space's energy preset
    max_examples: int | None = None         # cap on dev examples of a full evaluation
    early_stopping: bool = True             # False ignores the space's early_stopping
    population_size: int = 20               # NSGA-II/III generation size
    profile_examples: int = 64              # dev examples per sensitivity probe (guided sampler)
    max_failures: int = 5                   # stop after this many failed trials in one run
    stale_after_s: float = 120.0            # a driver silent this long is dead (other hosts)
    progress: bool = True                   # live status line on stderr
    trial_timeout: float | None = None      # seconds from a trial's submission; then it is killed and failed
    storage_patience: float = 600.0         # seconds to wait for unreachable storage before stopping
    trial_function: str = DEFAULT_TRIAL_FUNCTION  # "module:function" the workers run per trial (worker.py)
    reference: dict[str, float] | list[str] | None = None  # worst values counted by hypervolume, by objective

    def check(self) -> None:
        check_study_name(self.study_name)
        if self.sampler is not None and self.sampler not in SAMPLERS:
            raise SpikepruneError(f"sampler {self.sampler!r} is unknown; use one of {', '.join(SAMPLERS)}")
        for name in ("n_trials", "workers", "max_failures", "population_size", "profile_examples"):
            if int(getattr(self, name)) < 1:
                raise SpikepruneError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.cpus_per_trial <= 0 or self.gpus_per_trial < 0:
            raise SpikepruneError("cpus_per_trial must be > 0 and gpus_per_trial >= 0")
        if self.max_examples is not None and self.max_examples < 1:
            raise SpikepruneError(f"max_examples must be >= 1, got {self.max_examples}")
        if self.trial_timeout is not None and not self.trial_timeout > 0:
            raise SpikepruneError(f"trial_timeout must be > 0 seconds, got {self.trial_timeout}")
        if not self.storage_patience >= 0:
            raise SpikepruneError(f"storage_patience must be >= 0 seconds, got {self.storage_patience}")


def resume_seed(seed: int, trials: int, shared: bool = False) -> int:
    """The sampler seed of a driver that joins a study holding ``trials`` trials: different from every
    earlier run's, so a seeded sampler does not replay their first draws. A lone resume is
    reproducible; a driver joining others that run now (``shared``) also mixes in fresh entropy, as
    two drivers joining at once see the same count and would propose the same configs (one then
    waits on the other's evaluation, and the search runs at half speed)."""
    mixed = (seed * 1_000_003 + trials) % 2**31
    return mixed ^ secrets.randbits(31) if shared else mixed


def make_sampler(name: str, seed: int, population_size: int = 20) -> optuna.samplers.BaseSampler:
    """The sampler by name. Feasibility needs no constraints_func: in Optuna 5 every sampler reads
    the constraints the driver sets on each trial (``Trial.set_constraint``) before ``tell``."""
    import optuna

    s = optuna.samplers
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if name == "tpe":
            return s.TPESampler(multivariate=True, group=True, constant_liar=True, seed=seed)
        if name == "nsga2":
            return s.NSGAIISampler(population_size=population_size, seed=seed)
        if name == "nsga3":
            return s.NSGAIIISampler(population_size=population_size, seed=seed)
        if name == "gp":
            return s.GPSampler(seed=seed)
        if name == "random":
            return s.RandomSampler(seed=seed)
        if name == "guided":
            raise SpikepruneError("the guided sampler is built from a prepared base and a space: "
                                  "spikeprune.GuidedSampler.for_base(base, space)")
    raise SpikepruneError(f"sampler {name!r} is unknown; use one of {', '.join(SAMPLERS)}")

