"""``run_search``: check the settings, load the base, open the study, start Ray, drive, summarise."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import optuna
from optuna.trial import TrialState

from spikeprune.spaces._knobs import DEFAULT_SAMPLER
from spikeprune.spaces._schema import SearchSpace
from spikeprune.errors import SpikepruneError
from spikeprune.objectives import parse_reference

from spikeprune.search._cluster import check_reachable, ray_session
from spikeprune.search._driver import Driver, RunStats
from spikeprune.search._settings import SearchSettings
from spikeprune.search._storage import RetryingStorage, default_storage, describe, open_storage
from spikeprune.search._study import open_study, quiet_optuna
from spikeprune.search._worker import load_trial_function


@dataclasses.dataclass
class SearchResult:
    """What one ``run_search`` call did: the study, this run's statistics, the settings it ran with
    (sampler resolved) and where the study is stored."""

    study: optuna.Study
    stats: RunStats
    settings: SearchSettings
    location: str

    @property
    def complete(self) -> int:
        """COMPLETE trials the study holds, counting earlier runs."""
        return len(self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))

    @property
    def gave_up(self) -> bool:
        """This run stopped at ``max_failures`` failed trials."""
        return self.stats.failed >= self.settings.max_failures

    def summary(self) -> str:
        """What the run did, in the lines ``run_search`` prints when it ends."""
        stats = self.stats
        lines = [f"study {self.study.study_name} ({self.location}): this run finished {stats.finished} trials "
                 f"({stats.early_stopped} stopped early, {stats.duplicates} duplicates), {stats.failed} failed"]
        if stats.re_queued:
            lines.append(f"re-queued trials left running by a stopped driver: {stats.re_queued}")
        if stats.examples_without_stopping:
            lines.append(f"dev examples evaluated: {stats.examples}, "
                         f"{stats.examples / stats.examples_without_stopping:.0%} "
                         f"of the {stats.examples_without_stopping} that full evaluations of the same trials take")
        if self.gave_up:
            lines.append(f"stopped after {stats.failed} failed trials (--max-failures {self.settings.max_failures})")
        return "\n".join(lines)


def run_search(settings: SearchSettings) -> SearchResult:
    """Run (or resume) a search until the study holds ``n_trials`` COMPLETE trials, or this run has
    had ``max_failures`` failed trials."""
    settings.check()
    space = settings.space if isinstance(settings.space, SearchSpace) else SearchSpace.load(settings.space)
    space.reference = {**space.reference, **parse_reference(settings.reference, space.objectives, "--reference")}
    settings = dataclasses.replace(settings, sampler=settings.sampler or space.sampler or DEFAULT_SAMPLER)
    energy = settings.energy or space.energy
    if settings.energy:
        from spikeprune.costs._ops import resolve_energy
        resolve_energy(energy)
    load_trial_function(settings.trial_function)  # torch and the model code: after the cheap checks
    import torch

    if settings.gpus_per_trial > 0 and settings.ray_address is None and not torch.cuda.is_available():
        raise SpikepruneError(f"--gpus-per-trial {settings.gpus_per_trial:g} but this machine has no CUDA GPU for the "
                              f"local Ray cluster; use 0, or --ray-address of a cluster with GPUs")
    from spikeprune.trial._base import BaseBundle

    # Everything a trial reads travels with the base through the object store (not by path).
    recovers = max(space.knobs["recovery_steps"].values() or [0]) > 0
    base = BaseBundle.load(settings.prepared, settings.glue_dir, importance_method=space.importance, recovery=recovers)
    if settings.task and settings.task != base.task:
        raise SpikepruneError(f"--task {settings.task} but {settings.prepared} was prepared for {base.task}")
    model = base.student.config
    space.check(model)
    sampler_for = None
    if settings.sampler == "guided":   # measured (or loaded from the base's cache) before any storage is touched
        from spikeprune.samplers._cost_model import CostPredictor
        from spikeprune.samplers._guided import GuidedSampler
        from spikeprune.samplers._sensitivity import compute_profile

        spike_stats, profile = compute_profile(base, space, examples=settings.profile_examples)
        predictor = CostPredictor(base.student, base.importance, spike_stats, base.importance_method)

        def sampler_for(seed: int) -> GuidedSampler:
            return GuidedSampler(space, predictor, profile, energy=energy, seed=seed)
    if settings.ray_address:
        check_reachable(settings.ray_address)   # Ray itself would retry for minutes
    # Last, as a journal is created on opening: a search refused for bad input leaves no files.
    location = settings.storage or default_storage(settings.run_dir, settings.study_name)
    storage = RetryingStorage(optuna.storages.get_storage(open_storage(location)), describe(location),
                              settings.storage_patience)
    with quiet_optuna():
        study, resume = open_study(settings, space, storage, base.task, Path(settings.prepared).resolve(),
                                   model, energy, base.dev_size, sampler_for)
        driver = Driver(settings, space, study, storage, model, base.dev_size, energy, resume)
        with ray_session(settings):
            import ray

            base_ref = ray.put(base)
            del base
            stats = driver.run(base_ref)
    result = SearchResult(study, stats, settings, describe(location))
    print(result.summary())
    return result
