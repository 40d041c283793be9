"""Studies: create a search's study (directions, metric names, seeds, its record) or check that a
resumed one was made with the same settings; open a stored study by name (``load_study``); keep
Optuna's INFO lines out of the progress output (``quiet_optuna``).

Of several drivers starting together, only the one whose ``create_new_study`` succeeded sets the
study up; the others wait for its record, which it writes last, so seeds are queued once.
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
import warnings
from pathlib import Path

import optuna
from optuna.study import StudyDirection

from spikeprune.models._config import SpikingBertConfig
from spikeprune.spaces._schema import SearchSpace
from spikeprune.errors import SpikepruneError
from spikeprune.records import StudyRecord, TrialRecord

from spikeprune.search._resume import Resume
from spikeprune.search._settings import SearchSettings, make_sampler, resume_seed

#: How long a driver waits for another driver's setup of a study it has just created.
SETUP_WAIT_S = 30.0
SETUP_POLL_S = 0.2


def open_study(settings: SearchSettings, space: SearchSpace, storage: optuna.storages.BaseStorage,
               task: str, prepared: Path, model: SpikingBertConfig, energy: str, dev_size: int,
               sampler_for: Callable[[int], optuna.samplers.BaseSampler] | None = None) -> tuple[optuna.Study, Resume]:
    """The study of ``settings.study_name``: created and seeded, or loaded and checked. The sampler
    is ``settings.sampler``'s, or what ``sampler_for(seed)`` makes (the guided sampler needs the
    base). A driver that did not create the study gets a sampler seeded by ``resume_seed``: with the
    original seed a history-blind sampler (random) would draw the first configs again, as duplicates.
    Returns the study and this driver's ``Resume`` (its heartbeat is written here)."""
    make = sampler_for or (lambda seed: make_sampler(settings.sampler, seed, settings.population_size))
    try:
        storage.create_new_study([StudyDirection[d.upper()] for d in space.directions], settings.study_name)
        created = True
    except optuna.exceptions.DuplicatedStudyError:
        created = False
    # A joiner's sampler is made below, once its seed is known (Optuna's default stands in until then).
    study = optuna.load_study(study_name=settings.study_name, storage=storage,
                              sampler=make(settings.seed) if created else None)
    # The heartbeat goes first, before a creator's record and before a joiner counts the others:
    # drivers starting together then see each other (they would otherwise draw the same configs).
    resume = Resume(study, storage, settings.stale_after_s)
    resume.heartbeat(force=True)
    wanted = StudyRecord(task=task, objectives=[{"name": o.name, "direction": o.direction} for o in space.objectives],
                         space=space.to_dict(), prepared=str(prepared), energy=energy, dev_examples=dev_size,
                         max_examples=settings.max_examples, seed=settings.seed,
                         reference_given=space.reference or None)
    record = StudyRecord.find(study)
    deadline = time.monotonic() + SETUP_WAIT_S
    set_up_by_another = record is None and not created
    while record is None and not created and time.monotonic() < deadline:
        time.sleep(SETUP_POLL_S)  # another driver created the study a moment ago and is setting it up
        record = StudyRecord.find(study)
    if not created:   # counted after the setup, so a driver joining its creator does not replay its draws
        shared = set_up_by_another or resume.others_alive()
        study.sampler = make(resume_seed(settings.seed, len(study.get_trials(deepcopy=False)), shared))
    if record is None:
        trials = study.get_trials(deepcopy=False)
        if trials and not any(TrialRecord.of(t).seeded for t in trials):
            raise SpikepruneError(f"study {settings.study_name!r} exists but was not made by spikeprune search; "
                                  f"pick another --study name")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(space.objective_names)
        for i, config in enumerate([] if trials else space.seed_configs(model)):  # queued unless a setup broke off
            flags = {"seeded": True, **({"baseline": True} if i == 0 else {})}
            study.enqueue_trial(space.params(config, model), user_attrs=flags)
        wanted.write(study)
        return study, resume
    differs = record.conflict(wanted)
    if differs is not None:
        raise SpikepruneError(f"study {settings.study_name!r} was made with another {differs} "
                              f"({json.dumps(getattr(record, differs))[:120]}); "
                              f"resume with the same settings or pick a new --study name")
    if wanted.reference_given and wanted.reference_given != record.reference_given:
        record.reference_given = wanted.reference_given  # a reference given on resume applies from now on
        record.write(study)
    return study, resume


def load_study(study_name: str, storage: str | optuna.storages.BaseStorage) -> optuna.Study:
    """Open a stored study; the caller opens the storage (a URL or a storage object)."""
    try:
        return optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        names = optuna.get_all_study_names(storage)
        raise SpikepruneError(
            f"no study named {study_name!r} in this storage; it holds {names or 'no studies'}") from None


@contextmanager
def quiet_optuna() -> Iterator[None]:
    """Optuna's INFO lines (a study created, a trial finished) off for the block: the progress
    line and the report say what happened."""
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(verbosity)
