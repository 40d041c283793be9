"""The records spikeprune keeps, typed, versioned, and written and read here only.

- ``PreparedRecord``: ``<prepared>/prepare.json``, how a prepared base was made and what it scored.
- ``StudyRecord``: the study's user attribute ``"spikeprune"``, what a search was run on and with
  (task, base, space, objectives, energy model, seed, dev examples, reference point).
- ``TrialRecord``: a trial's user attributes, what it evaluated and measured and who ran it.

Each carries ``format`` (FORMAT when written by this version; records without one are format 0,
read the same way). A record that is missing a field or holds a wrong type is refused on read
with one line naming the file or study and the fix.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from spikeprune.errors import SpikepruneError
from spikeprune.objectives import METRIC, METRIC_NAMES, Objective

if TYPE_CHECKING:
    from spikeprune.costs._ann import AnnReference

FORMAT = 1
_KINDS = {"str": str, "int": int, "float": (int, float), "bool": bool, "dict": dict, "list": list}


def _check(data: Any, cls: type, where: str, fix: str) -> dict[str, Any]:
    """The fields of dataclass ``cls`` from ``data``, each present (or defaulted) and of its type."""
    if not isinstance(data, dict):
        raise SpikepruneError(f"{where} is not a record (a JSON object); {fix}")
    version = data.get("format", 0)
    if not isinstance(version, int) or version > FORMAT:
        raise SpikepruneError(f"{where} has format {version!r}, newer than this spikeprune reads ({FORMAT}); "
                              f"upgrade spikeprune")
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise SpikepruneError(f"{where} has no {f.name!r}; {fix}")
            continue
        value = data[f.name]
        kinds = [k.strip() for k in str(f.type).split("|")]
        allowed = tuple(_KINDS[k.split("[")[0]] for k in kinds if k.split("[")[0] in _KINDS)
        if value is None and "None" in kinds:
            pass
        elif allowed and (not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed)):
            raise SpikepruneError(f"{where}: {f.name!r} is {value!r}, not a {' or '.join(kinds)}; {fix}")
        values[f.name] = value
    values["format"] = version
    return values


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``path`` whole or not at all (a temporary file renamed over it)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- prepared base
@dataclass(frozen=True)
class PreparedRecord:
    """``prepare.json``: the task, preset values, seed and data a base was made from, and its scores."""

    FILE: ClassVar[str] = "prepare.json"
    #: Written when a prepare starts: the ``key`` of the base being made, so a resumed prepare
    #: of another command cannot reuse the stages (``training/_cache.py``).
    KEY_FILE: ClassVar[str] = "prepare-key.json"
    task: str
    preset: str
    preset_config: dict[str, Any]
    seed: int
    glue_dir: str | None
    base: str
    timesteps: list[int]
    layer_map: list[int]
    dev_examples: int
    teacher_metrics: dict[str, float]
    student_metrics: dict[str, float]
    timings: dict[str, float] = field(default_factory=dict)
    #: What made the base (task, preset values, seed, base, GLUE file digests); None in older records.
    key: dict[str, Any] | None = None
    #: Size and SHA-256 of every file, by relative path, as written; None in older records.
    files: dict[str, Any] | None = None
    format: int = FORMAT

    @classmethod
    def write_key(cls, folder: str | Path, key: dict[str, Any]) -> None:
        Path(folder).mkdir(parents=True, exist_ok=True)
        _write_json(Path(folder) / cls.KEY_FILE, key)

    @classmethod
    def read_key(cls, folder: str | Path) -> dict[str, Any] | None:
        """The key of a prepare that started in ``folder`` (None: none started, or unreadable)."""
        try:
            data = json.loads((Path(folder) / cls.KEY_FILE).read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    @property
    def max_length(self) -> int:
        return int(self.preset_config["max_length"])

    def write(self, folder: str | Path) -> Path:
        path = Path(folder) / self.FILE
        _write_json(path, {**dataclasses.asdict(self), "format": FORMAT})
        return path

    @classmethod
    def exists(cls, folder: str | Path) -> bool:
        return (Path(folder) / cls.FILE).is_file()

    @classmethod
    def read(cls, folder: str | Path) -> "PreparedRecord":
        path = Path(folder) / cls.FILE
        fix = "run `spikeprune prepare` again into a fresh --run-dir"
        if not path.is_file():
            raise SpikepruneError(f"{folder} is not a prepared base (no {cls.FILE}); run `spikeprune prepare` first")
        try:
            data = json.loads(path.read_text())
        except (ValueError, OSError):
            raise SpikepruneError(f"{path} is damaged; {fix}") from None
        values = _check(data, cls, str(path), fix)
        if not isinstance(values["preset_config"].get("max_length"), int):
            raise SpikepruneError(f"{path}: preset_config has no integer max_length; {fix}")
        return cls(**values)


# ------------------------------------------------------------------------------------- study
@dataclass
class StudyRecord:
    """What a search study was made with (the study's user attribute ``"spikeprune"``)."""

    KEY: ClassVar[str] = "spikeprune"
    #: Fields a resumed search must share with the study: another value would mix incomparable trials.
    SAME_ON_RESUME: ClassVar[tuple[str, ...]] = ("task", "prepared", "space", "energy", "max_examples", "seed")
    task: str
    objectives: list[dict[str, str]]
    energy: str
    prepared: str | None = None
    space: dict[str, Any] = field(default_factory=dict)
    dev_examples: int | None = None
    max_examples: int | None = None
    #: The seed of the sampler and of every trial (recovery, bootstrap); None in format-0 studies.
    seed: int | None = None
    #: The dense baseline's objective values, once it has finished fully evaluated.
    reference: dict[str, float] | None = None
    #: Reference values the user gave (``--reference``, the space's ``reference``), by objective name.
    reference_given: dict[str, float] | None = None
    format: int = FORMAT

    @property
    def objective_list(self) -> list[Objective]:
        """The objectives, the metric labelled with the task's own metric name."""
        metric = self.metric_name
        return [Objective(o["name"], o["direction"], metric if o["name"] == METRIC else "") for o in self.objectives]

    @property
    def metric_name(self) -> str:
        """The task's main metric as people call it (accuracy, F1, Pearson, Matthews correlation)."""
        from spikeprune.data._glue import get_task

        try:
            return METRIC_NAMES[get_task(self.task).main_metric]
        except SpikepruneError:
            return METRIC

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "format": FORMAT}

    def write(self, study: Any) -> None:
        study.set_user_attr(self.KEY, self.to_dict())

    @classmethod
    def find(cls, study: Any) -> "StudyRecord | None":
        """The study's record, or None for a study no search has set up (yet)."""
        data = study.user_attrs.get(cls.KEY)
        if data is None:
            return None
        return cls(**_check(data, cls, f"study {study.study_name!r}",
                            "its metadata is damaged; start a new study with another --study name"))

    @classmethod
    def read(cls, study: Any) -> "StudyRecord":
        record = cls.find(study)
        if record is None or not record.objectives:
            raise SpikepruneError(f"study {study.study_name!r} has no 'spikeprune' objectives attribute; "
                                  f"open a study created by `spikeprune search`")
        return record

    def conflict(self, other: "StudyRecord") -> str | None:
        """The first field of SAME_ON_RESUME in which ``other`` differs (None: same study)."""
        def core(space: dict[str, Any]) -> dict[str, Any]:
            ignored = ("name", "description", "early_stopping", "reference", "sampler")
            return {k: v for k, v in space.items() if k not in ignored}

        for name in self.SAME_ON_RESUME:
            mine, theirs = getattr(self, name), getattr(other, name)
            if name == "space":
                mine, theirs = core(mine), core(theirs)
            if name == "seed" and mine is None:
                continue  # a format-0 study did not record its seed
            if mine != theirs:
                return name
        return None


# ------------------------------------------------------------------------------------- trial
@dataclass
class TrialRecord:
    """What a trial stores as user attributes, written by the search driver.

    Set on ask: ``driver`` (and ``seeded``/``baseline``/``retry_of`` for queued configs) and the
    resolved ``compression``; on a result: the RESULT fields; on failure: ``error`` (``traceback``);
    ``duplicate_of`` when it repeats an earlier trial's config and was told that trial's values.
    """

    #: The fields of a measured result, copied whole to a duplicate.
    RESULT: ClassVar[tuple[str, ...]] = ("metrics", "metric_ci", "report", "ann", "timing", "worker", "node",
                                         "device", "examples", "fidelity", "early_stopped", "partial")
    compression: dict[str, Any] | None = None
    metrics: dict[str, float] | None = None
    metric_ci: list[float] | None = None
    report: dict[str, Any] | None = None
    #: ``costs.AnnReference.to_dict()``: the ANN teacher and integer twin on the trial's tokens
    #: (None in trials measured before spikeprune counted them).
    ann: dict[str, Any] | None = None
    timing: dict[str, float] | None = None
    worker: str | None = None     # host:pid of the process that evaluated it
    node: str | None = None       # the Ray node that ran it: address/first 8 hex of its node id
    device: str | None = None     # cpu or cuda
    examples: int | None = None
    fidelity: float | None = None
    early_stopped: bool = False
    partial: dict[str, Any] | None = None
    duplicate_of: int | None = None
    seeded: bool = False
    baseline: bool = False
    retry_of: int | None = None
    driver: dict[str, Any] | None = None
    error: str | None = None
    traceback: str | None = None
    skipped: str | None = None
    format: int = 0

    @classmethod
    def of(cls, trial: Any) -> "TrialRecord":
        known = {f.name for f in dataclasses.fields(cls)}
        attrs = {k: v for k, v in trial.user_attrs.items() if k in known}
        return cls(**_check(attrs, cls, f"trial {trial.number}", "the study's storage is damaged"))

    @classmethod
    def set(cls, trial: Any, **values: Any) -> None:
        """Store fields on a live ``optuna.Trial`` (unknown names are a programming error)."""
        known = {f.name for f in dataclasses.fields(cls)}
        for key, value in values.items():
            if key not in known:
                raise KeyError(f"TrialRecord has no field {key!r}")
            trial.set_user_attr(key, value)

    @property
    def ann_reference(self) -> "AnnReference | None":
        """The stored ANN references, typed (None when the trial holds none)."""
        if self.ann is None:
            return None
        from spikeprune.costs._ann import AnnReference

        return AnnReference.from_dict(self.ann)

    @property
    def ann_ratios(self) -> dict[str, float] | None:
        """The trial's energy as a multiple of each ANN reference's (``costs.ANN_NETWORKS`` keys),
        None when it holds no ANN reference."""
        reference = self.ann_reference
        if reference is None or not self.report:
            return None
        return reference.ratios(float(self.report["energy_uj"]))

    @property
    def fresh(self) -> bool:
        """Measured by its own evaluation (not a copy of an earlier trial's result)."""
        return self.duplicate_of is None
