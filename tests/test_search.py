"""The search service end to end: real Ray (the session's local cluster), real Optuna storage
(journal file and PostgreSQL) and the real trial kernel on a tiny prepared model."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from spikeprune import SearchSettings, open_storage, run_search, study_status
from spikeprune.models._config import CompressionConfig
from spikeprune.search._settings import check_study_name, make_sampler
from spikeprune.trial._run import EarlyStop
from spikeprune.cli import main as cli_main
from spikeprune.errors import SpikepruneError
from spikeprune.records import StudyRecord, TrialRecord

from tiny_spaces import TINY_KNOBS

optuna.logging.set_verbosity(optuna.logging.WARNING)

# The tiny student: 2 layers of 2 heads, FFN 64, T = 2. Every knob is searched, coarsely.
TINY_SPACE = "name: tiny" + TINY_KNOBS + """constraints: {metric_min: 0.3}
early_stopping: {fraction: 0.5, margin: 0.0}
"""
MAX_EXAMPLES = 16


@pytest.fixture
def space_file(tmp_path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_SPACE)
    return path


def settings(prepared: Path, space: Path, run_dir: Path, **overrides) -> SearchSettings:
    base = dict(prepared=prepared, space=space, study_name="s", n_trials=5, workers=2, run_dir=run_dir,
                max_examples=MAX_EXAMPLES, progress=False)
    return SearchSettings(**{**base, **overrides})


def complete(study: optuna.Study) -> list:
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


def check_trial_record(study: optuna.Study, trial, dev_size: int) -> None:
    """The stored per-trial record (records.TrialRecord): compression, metrics, report, timing, worker, fidelity, constraints."""
    attrs = trial.user_attrs
    if "duplicate_of" in attrs:
        twin = study.trials[attrs["duplicate_of"]]
        assert twin.params == trial.params and twin.values == trial.values
        return
    config = CompressionConfig.from_dict(attrs["compression"])
    assert isinstance(config.heads, list) and len(config.heads) == 2
    metric, sops = trial.values
    assert attrs["metrics"]["metric"] == metric
    assert attrs["report"]["sops"] == pytest.approx(sops)
    assert {"compress_s", "eval_s", "total_s"} <= set(attrs["timing"])
    host, pid = attrs["worker"].rsplit(":", 1)
    assert int(pid) != os.getpid()  # evaluated in a Ray worker, not the driver
    stopped = attrs["early_stopped"]
    assert attrs["examples"] == (MAX_EXAMPLES // 2 if stopped else MAX_EXAMPLES)
    assert attrs["fidelity"] == pytest.approx(attrs["examples"] / dev_size)
    assert attrs["partial"]["examples"] == MAX_EXAMPLES // 2  # every trial took the early look first
    if stopped:  # told its look's values; a survivor was told the values over the whole dev set
        assert trial.values == attrs["partial"]["values"]
    assert trial.constraints == pytest.approx({"metric_min": 0.3 - metric})
    # The ANN references were counted on the same examples and tokens as the spikes.
    ann = TrialRecord.of(trial).ann_reference
    assert ann.examples == attrs["examples"] == attrs["report"]["examples"]
    assert ann.tokens_per_example == attrs["report"]["tokens_per_example"]
    assert ann.twin.macs <= ann.teacher.macs and ann.teacher_int8.energy_uj <= ann.teacher.energy_uj


@pytest.mark.integration
def test_search_end_to_end_on_the_journal(tiny_prepared, space_file, tmp_path, ray_local, capsys):
    result = run_search(settings(tiny_prepared, space_file, tmp_path, n_trials=6))
    study = result.study
    assert (tmp_path / "s" / "journal.log").is_file()
    done = complete(study)
    assert len(done) == 6
    meta = study.user_attrs["spikeprune"]
    assert meta["task"] == "sst2" and meta["space"]["name"] == "tiny"
    assert meta["objectives"] == [{"name": "metric", "direction": "maximize"}, {"name": "sops", "direction": "minimize"}]
    assert study.metric_names == ["metric", "sops"]

    baseline = study.trials[0]
    assert baseline.user_attrs["seeded"] and baseline.user_attrs["baseline"]
    assert baseline.params == {"heads_l0": 2, "heads_l1": 2, "neurons_l0": 64, "neurons_l1": 64,
                               "timesteps": 2, "weight_bits": 32.0}
    assert baseline.state == TrialState.COMPLETE and not baseline.user_attrs["early_stopped"]
    assert meta["reference"] == {"metric": baseline.values[0], "sops": baseline.values[1]}
    seeded = [t.number for t in study.trials if t.user_attrs.get("seeded")]
    assert seeded == list(range(len(seeded))) and len(seeded) >= 2  # baseline and uniform seeds first

    for trial in done:
        check_trial_record(study, trial, meta["dev_examples"])
    out = capsys.readouterr().out
    assert "this run finished 6 trials" in out and "dev examples evaluated" in out
    # The run's own account: every trial it finished, counted once, and no failures.
    assert result.complete == 6 and result.stats.finished == 6 and result.stats.failed == 0 and not result.gave_up
    assert result.stats.early_stopped == sum(bool(t.user_attrs["early_stopped"]) for t in done)
    assert result.settings.sampler == "tpe" and result.summary() in out

    # Running again with the same target does nothing: finished trials are never re-run.
    again = run_search(settings(tiny_prepared, space_file, tmp_path, n_trials=6)).study
    assert len(again.trials) == len(study.trials)
    status = study_status(str(tmp_path / "s" / "journal.log"), "s")
    assert "study s: task sst2, space tiny" in status and "6 complete" in status and "front" in status
    assert "objectives accuracy (max), sops (min)" in status and "accuracy" in status.split("Pareto front:")[1]


@pytest.mark.integration
def test_resume_after_the_driver_is_killed(tiny_prepared, space_file, tmp_path, ray_local):
    journal = tmp_path / "r" / "journal.log"
    command = [sys.executable, "-m", "spikeprune", "search", "--prepared", str(tiny_prepared), "--space", str(space_file),
               "--study", "r", "--n-trials", "6", "--workers", "2", "--run-dir", str(tmp_path),
               "--max-examples", str(MAX_EXAMPLES), "--ray-address", ray_local, "--quiet"]
    driver = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def running_and_complete() -> bool:
        storage = open_storage(journal) if journal.is_file() else None
        if storage is None or "r" not in optuna.get_all_study_names(storage):
            return False
        states = {t.state for t in optuna.load_study(study_name="r", storage=storage).get_trials(deepcopy=False)}
        return TrialState.COMPLETE in states and TrialState.RUNNING in states

    # Look while the driver runs; when a look sees the moment, freeze the driver (SIGSTOP) and look
    # again, so that the trial seen RUNNING cannot finish between the look and the kill. Looking
    # only while frozen paused the driver for every look and could miss every moment of a fast run.
    deadline = time.monotonic() + 300
    try:
        while True:
            assert driver.poll() is None, driver.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the driver finished no trial in 300 s"
            if running_and_complete():
                driver.send_signal(signal.SIGSTOP)
                if running_and_complete():
                    break
                driver.send_signal(signal.SIGCONT)
            time.sleep(0.05)
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    before = {t.number: t for t in optuna.load_study(study_name="r", storage=open_storage(journal)).trials}
    running = [n for n, t in before.items() if t.state == TrialState.RUNNING]
    finished = {n: t.values for n, t in before.items() if t.state == TrialState.COMPLETE}
    assert running and finished

    study = run_search(settings(tiny_prepared, space_file, tmp_path, study_name="r", n_trials=6)).study
    after = {t.number: t for t in study.trials}
    assert len(complete(study)) == 6
    for n, values in finished.items():  # finished trials kept, not re-run
        assert after[n].state == TrialState.COMPLETE and after[n].values == values
    for n in running:  # failed, their parameters queued again and evaluated
        assert after[n].state == TrialState.FAIL
        assert "stopped while the trial ran; re-queued" in after[n].user_attrs["error"]
        retries = [t for t in study.trials if t.user_attrs.get("retry_of") == n]
        # The driver may die while it is still drawing a trial's parameters: the retry keeps every
        # parameter that was drawn or enqueued (a seed's whole config) and draws the rest. A trial
        # killed before any parameter existed has nothing to re-queue.
        drawn = {**before[n].system_attrs.get("fixed_params", {}), **before[n].params}
        if not drawn:
            assert not retries
            continue
        assert len(retries) == 1 and drawn.items() <= retries[0].params.items()
        assert retries[0].state == TrialState.COMPLETE
    fresh = [tuple(sorted(t.params.items())) for t in complete(study) if "duplicate_of" not in t.user_attrs]
    assert len(fresh) == len(set(fresh))  # no config evaluated twice
    assert after[0].user_attrs["baseline"] and study.user_attrs["spikeprune"]["reference"]


@pytest.mark.integration
def test_postgres_study(tiny_prepared, space_file, tmp_path, ray_local, postgres_url):
    name = f"pg-{uuid.uuid4().hex[:8]}"
    study = run_search(settings(tiny_prepared, space_file, tmp_path, study_name=name, storage=postgres_url,
                                n_trials=3, sampler="nsga2", early_stopping=False)).study
    loaded = optuna.load_study(study_name=name, storage=postgres_url)
    assert len(complete(loaded)) == 3
    assert [t.values for t in complete(loaded)] == [t.values for t in complete(study)]
    assert all(t.user_attrs["fidelity"] == pytest.approx(MAX_EXAMPLES / loaded.user_attrs["spikeprune"]["dev_examples"])
               and "partial" not in t.user_attrs for t in complete(loaded))
    assert "3 complete" in study_status(postgres_url, name)
    assert name in study_status(postgres_url)


@pytest.mark.integration
def test_resuming_with_another_space_is_refused(tiny_prepared, space_file, tmp_path, ray_local):
    run_search(settings(tiny_prepared, space_file, tmp_path, study_name="x", n_trials=1, early_stopping=False))
    other = tmp_path / "other.yaml"
    other.write_text(TINY_SPACE.replace("min: 32, max: 64", "min: 64, max: 64"))
    with pytest.raises(SpikepruneError, match="study 'x' was made with another space"):
        run_search(settings(tiny_prepared, other, tmp_path, study_name="x", n_trials=2))


@pytest.mark.integration
def test_a_space_names_its_sampler_and_the_command_line_overrides_it(tiny_prepared, space_file, tmp_path, ray_local):
    """A space's ``sampler`` is the search's unless the settings name one (a resume may change it);
    a space without one gets TPE."""
    own = tmp_path / "own.yaml"
    own.write_text(TINY_SPACE + "sampler: random\n")
    study = run_search(settings(tiny_prepared, own, tmp_path, study_name="own", n_trials=1, early_stopping=False)).study
    assert isinstance(study.sampler, optuna.samplers.RandomSampler)
    study = run_search(settings(tiny_prepared, own, tmp_path, study_name="own", n_trials=2, early_stopping=False,
                                sampler="nsga2")).study
    assert isinstance(study.sampler, optuna.samplers.NSGAIISampler) and len(complete(study)) == 2
    plain = run_search(settings(tiny_prepared, space_file, tmp_path, study_name="plain", n_trials=1,
                                early_stopping=False)).study
    assert isinstance(plain.sampler, optuna.samplers.TPESampler)


@pytest.mark.integration
def test_trials_that_cannot_reach_the_hypervolume_reference_stop_at_their_look(tiny_prepared, tmp_path, ray_local):
    """The metric floor of early stopping includes the hypervolume reference: with the reference at
    0.999, a trial whose look of 8 examples scores at most half right (the upper end of its 95 %
    bootstrap interval is then at most 7/8) stops there, a uniform seed too; the baseline runs in full."""
    space = tmp_path / "ref.yaml"
    space.write_text("name: ref" + TINY_KNOBS + "reference: {metric: 0.999}\nearly_stopping: {fraction: 0.5, margin: 0.0}\n")
    study = run_search(settings(tiny_prepared, space, tmp_path, n_trials=8, workers=1, sampler="random")).study
    looked = [t for t in complete(study) if not t.user_attrs.get("baseline") and "duplicate_of" not in t.user_attrs]
    low = [t for t in looked if t.user_attrs["partial"]["metrics"]["metric"] <= 0.5]
    assert any(t.user_attrs.get("seeded") for t in low) and any(not t.user_attrs.get("seeded") for t in low), \
        "not both a seed and a sampled trial scored half or less at their looks: the tiny base changed, pick another space"
    assert all(t.user_attrs["early_stopped"] and t.user_attrs["examples"] == MAX_EXAMPLES // 2 for t in low)
    baseline = next(t for t in complete(study) if t.user_attrs.get("baseline"))
    assert not baseline.user_attrs["early_stopped"] and baseline.user_attrs["examples"] == MAX_EXAMPLES


def test_trial_function_errors_come_back_as_data(tiny_prepared):
    from spikeprune.trial._base import BaseBundle
    from spikeprune.search._worker import evaluate

    base = BaseBundle.load(tiny_prepared)
    out = evaluate(base, CompressionConfig(heads=3).to_dict(), max_examples=4, seed=0, energy="float45nm", threads=1)
    assert out["error"].startswith("SpikepruneError: heads[0]=3")
    assert out["worker"].endswith(f":{os.getpid()}") and "Traceback" in out["traceback"]


# ----------------------------------------------------------------------------- pure parts
def test_clearly_beaten_hand_cases():
    directions = ("maximize", "minimize")
    front = ((0.80, 100.0), (0.70, 50.0))

    def clearly_beaten(values, others, directions, metric, margin, floor=None, upper=None):
        look = EarlyStop(examples=8, objectives=("metric", "sops"), directions=directions, metric=metric,
                         margin=margin, floor=floor, others=others)
        return look.stops(dict(zip(look.objectives, values)), values[metric] if upper is None else upper)

    assert clearly_beaten([0.75, 120.0], front, directions, 0, margin=0.02)          # 0.80 > 0.75 + 0.02, cheaper
    assert not clearly_beaten([0.79, 120.0], front, directions, 0, margin=0.02)      # within the margin
    assert not clearly_beaten([0.60, 40.0], front, directions, 0, margin=0.02)       # cheapest: nobody dominates
    assert not clearly_beaten([0.75, 60.0], front, directions, 0, margin=0.0)        # 0.70@50 is worse in metric
    assert clearly_beaten([0.75, 60.0], front, directions, 0, margin=0.0, floor=0.8)  # misses the floor
    # The floor is checked on the metric's upper confidence bound, not on the metric itself.
    assert not clearly_beaten([0.75, 60.0], front, directions, 0, margin=0.0, floor=0.8, upper=0.81)
    assert clearly_beaten([0.60, 40.0], front, directions, 0, margin=0.02, floor=0.8, upper=0.79)


def test_race_against_the_fully_evaluated_front_hand_cases():
    """A look stops when a fully evaluated trial costs no more and scores above the look's upper
    bound, at the first look and at later ones; the other looks' margin rule holds at the first only."""
    directions = ("maximize", "minimize")

    def stops(values, upper, *, front=(), others=(), first=True):
        look = EarlyStop(examples=8, objectives=("metric", "sops"), directions=directions, metric=0,
                         margin=0.02, others=others, front=front)
        return look.stops(dict(zip(look.objectives, values)), upper, first=first)

    done = ((0.85, 100.0),)
    assert stops([0.70, 120.0], 0.84, front=done)                   # 0.85 > 0.84 at no more cost
    assert stops([0.70, 100.0], 0.84, front=done, first=False)      # equal cost still counts; later looks too
    assert not stops([0.70, 120.0], 0.86, front=done)               # the interval reaches past 0.85
    assert not stops([0.70, 120.0], 0.85, front=done)               # a tie is no gain
    assert not stops([0.70, 99.0], 0.80, front=done)                # cheaper than the front: may add volume
    beaten_look = ((0.80, 100.0),)
    assert stops([0.70, 120.0], 0.95, others=beaten_look)           # first look: the others' looks count
    assert not stops([0.70, 120.0], 0.95, others=beaten_look, first=False)


def test_samplers_are_chosen_explicitly():
    tpe = make_sampler("tpe", seed=1)
    assert isinstance(tpe, optuna.samplers.TPESampler)
    assert tpe._multivariate and tpe._group and tpe._constant_liar
    assert isinstance(make_sampler("nsga2", 1, population_size=8), optuna.samplers.NSGAIISampler)
    assert isinstance(make_sampler("nsga3", 1), optuna.samplers.NSGAIIISampler)
    assert isinstance(make_sampler("gp", 1), optuna.samplers.GPSampler)
    assert isinstance(make_sampler("random", 1), optuna.samplers.RandomSampler)
    with pytest.raises(SpikepruneError, match="sampler 'cmaes' is unknown; use one of tpe, nsga2"):
        make_sampler("cmaes", 1)


@pytest.mark.parametrize("name, ok", [("sst2-joint_1.0", True), ("a" * 64, True), ("a" * 65, False),
                                      ("has space", False), ("a/b", False), ("..", False), ("", False)])
def test_study_names(name, ok):
    if ok:
        assert check_study_name(name) == name
    else:
        with pytest.raises(SpikepruneError, match="use 1-64 letters, digits, '-', '_' or '.'"):
            check_study_name(name)


def test_storage_errors_are_one_clear_line(tmp_path):
    cases = [
        ("mysql://u@h/db", "storage URL scheme 'mysql' is not supported"),
        ("postgresql+psycopg2://u@h:port/db", "is not a valid SQLAlchemy URL"),
        ("postgresql+psycopg2://u:secret@127.0.0.1:1/db", "cannot connect to storage postgresql+psycopg2://u:***@127.0.0.1:1/db"),
        (str(tmp_path), "is a folder; give the journal file"),
    ]
    for url, message in cases:
        with pytest.raises(SpikepruneError) as err:
            open_storage(url)
        assert message in str(err.value) and "secret" not in str(err.value) and "\n" not in str(err.value)
    journal = open_storage(tmp_path / "new" / "journal.log")
    assert isinstance(journal, optuna.storages.JournalStorage) and (tmp_path / "new" / "journal.log").is_file()


def test_cli_reports_bad_input_as_one_line(tmp_path, capsys):
    code = cli_main(["search", "--prepared", str(tmp_path), "--study", "bad name", "--run-dir", str(tmp_path)])
    assert code == 2
    assert capsys.readouterr().err.strip() == "error: study name 'bad name' is not allowed; use 1-64 letters, digits, '-', '_' or '.'"
    assert cli_main(["status", "none", "--run-dir", str(tmp_path)]) == 2
    assert "no study journal at" in capsys.readouterr().err


@pytest.mark.integration
def test_export_remeasures_with_the_search_seed(tiny_prepared, tmp_path, glue_dir, ray_local, capsys):
    """A `--seed 3` search whose trials run recovery and prune by activity: the study records its
    seed and space and the export rebuilds (recovery data and order, the units kept) with them, so
    it re-measures what the search measured."""
    space = tmp_path / "recover.yaml"
    space.write_text("name: recover\nheads: 1\nneurons: 32\ntimesteps: {min: 1, max: 2}\nrecovery_steps: 2\n"
                     "importance: activity\n"
                     "objectives: [{name: metric, direction: maximize}, {name: sops, direction: minimize}]\n")
    common = ["--run-dir", str(tmp_path), "--glue-dir", str(glue_dir)]
    assert cli_main(["search", "--prepared", str(tiny_prepared), "--space", str(space), "--study", "seeded",
                     "--seed", "3", "--n-trials", "2", "--workers", "1", "--max-examples", str(MAX_EXAMPLES),
                     "--quiet", *common]) == 0
    study = optuna.load_study(study_name="seeded", storage=open_storage(tmp_path / "seeded" / "journal.log"))
    assert StudyRecord.read(study).seed == 3
    assert all(TrialRecord.of(t).compression["recovery_steps"] == 2 for t in complete(study))
    capsys.readouterr()
    assert cli_main(["export", "seeded", "--trial", "0", *common]) == 0
    printed = capsys.readouterr()
    assert "re-measured" not in printed.err and "x the fp32 ANN teacher" in printed.out
    metrics = json.loads((tmp_path / "seeded" / "export" / "trial-00000" / "metrics.json").read_text())
    assert metrics["ok"] and metrics["measured"] == pytest.approx(metrics["search"], abs=0)
    config = yaml.safe_load((tmp_path / "seeded" / "export" / "trial-00000" / "config.yaml").read_text())
    assert config["ann"]["spiking_x"]["teacher"] == pytest.approx(
        metrics["report"]["energy_uj"] / metrics["ann"]["teacher"]["energy_uj"])


@pytest.mark.integration
def test_a_resumed_random_search_does_not_replay_its_first_draws(tiny_prepared, space_file, tmp_path, ray_local):
    """A seeded sampler re-created on resume would draw its first configs again; the resumed run is
    seeded by resume_seed instead (the 40-trial benchmark of 2026-12-02 found 16 replayed duplicates)."""
    from spikeprune.search._settings import resume_seed

    first = run_search(settings(tiny_prepared, space_file, tmp_path, n_trials=6, workers=1, sampler="random",
                                early_stopping=False)).study
    before = first.trials
    drawn = [t.params for t in before if not t.user_attrs.get("seeded")]
    again = run_search(settings(tiny_prepared, space_file, tmp_path, n_trials=6 + len(drawn), workers=1,
                                sampler="random", early_stopping=False)).study
    resumed = [t.params for t in again.trials[len(before):]]
    assert len(resumed) == len(drawn) and resumed != drawn
    assert resume_seed(0, 6) != 0 and resume_seed(0, 6) == resume_seed(0, 6) != resume_seed(0, 7)


def test_drivers_joining_a_running_study_draw_their_own_configs(tiny_prepared, space_file, tmp_path):
    """Two drivers starting together (the second joins while the first sets the study up or runs)
    must not propose the same configs: the second would wait on the first's evaluation of each (and
    a cluster test hung on exactly that). A lone resume stays reproducible."""
    import socket

    from spikeprune.models._config import SpikingBertConfig
    from spikeprune.search._resume import HEARTBEAT_KEY
    from spikeprune.search._study import open_study
    from spikeprune.spaces._schema import SearchSpace

    s = settings(tiny_prepared, space_file, tmp_path, sampler="random")
    model = SpikingBertConfig.load(tiny_prepared / "student" / "config.json")
    storage = optuna.storages.get_storage(open_storage(tmp_path / "join.log"))

    def join() -> float:
        study, _ = open_study(s, SearchSpace.load(space_file), storage, "sst2", tiny_prepared, model, "45nm", 64)
        return study.sampler.sample_independent(study, None, "x", optuna.distributions.FloatDistribution(0, 1))

    def exit_drivers() -> None:
        """The drivers that opened the study so far end (their heartbeats name a process that is gone)."""
        gone = subprocess.Popen(["true"])
        gone.wait()
        for key in storage.get_study_system_attrs(study_id):
            if key.startswith(HEARTBEAT_KEY):
                storage.set_study_system_attr(study_id, key, {"time": 0.0, "host": socket.gethostname(),
                                                              "pid": gone.pid})

    creator = join()
    study_id = storage.get_study_id_from_name("s")
    exit_drivers()
    lone = [join()]
    exit_drivers()
    lone.append(join())
    exit_drivers()
    assert lone[0] == lone[1] != creator   # a lone resume: reproducible, not the creator's draws
    storage.set_study_system_attr(study_id, HEARTBEAT_KEY + "running",
                                  {"time": time.time(), "host": socket.gethostname(), "pid": os.getpid()})
    joined = [join(), join()]
    assert len({creator, *lone, *joined}) == 4
    # Drivers starting together, none running before: the heartbeat each writes on opening the
    # study is there before the next one counts the others, so they draw apart.
    exit_drivers()
    together = [join(), join()]
    assert together[0] != together[1]


def test_only_trials_with_cpus_of_their_own_spin(monkeypatch):
    """The command makes idle OpenMP threads sleep unless the user chose a policy; trials of 2+ CPUs
    get workers whose threads spin (ACTIVE), one-thread trials sleeping ones; a policy the user set
    is kept everywhere (``import spikeprune`` sets nothing: tests/test_layout.py)."""
    from spikeprune import threads

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.setattr(threads, "_defaulted", False)
    assert threads.user_wait_policy() is None
    assert threads.trial_wait_policy(1) == threads.trial_wait_policy(1.5) == {"OMP_WAIT_POLICY": "PASSIVE"}
    assert threads.trial_wait_policy(2) == threads.trial_wait_policy(8) == {"OMP_WAIT_POLICY": "ACTIVE"}
    threads.default_wait_policy()                       # what the command's main does first
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE" and threads.user_wait_policy() is None
    assert threads.trial_wait_policy(8) == {"OMP_WAIT_POLICY": "ACTIVE"}

    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")     # the user's choice
    monkeypatch.setattr(threads, "_defaulted", False)
    threads.default_wait_policy()
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE" and threads.user_wait_policy() == "ACTIVE"
    assert threads.trial_wait_policy(1) == threads.trial_wait_policy(8) == {}
