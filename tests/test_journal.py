"""A journal that survives a torn write: the last record cut at every byte offset is recovered on
open (with a backup and one line saying so) and nothing finished before it is lost; a corrupt line
in the middle is refused with its line number, and `spikeprune check --repair` cuts it off; a real
search whose journal lost half its last record resumes and finishes."""
from __future__ import annotations

import errno
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from spikeprune import SearchSettings, open_storage, run_search
from spikeprune.errors import SpikepruneError
from spikeprune.search._journal import inspect_journal

from helpers import run_cli
from tiny_spaces import TINY_KNOBS

optuna.logging.set_verbosity(optuna.logging.WARNING)


def make_journal(path: Path, trials: int = 3) -> None:
    """A journal study whose last record completes its last trial."""
    study = optuna.create_study(storage=open_storage(path), study_name="st", directions=["maximize", "minimize"])
    study.set_user_attr("spikeprune", {"task": "sst2", "energy": "float45nm",
                                       "objectives": [{"name": "metric", "direction": "maximize"},
                                                      {"name": "sops", "direction": "minimize"}]})
    for i in range(trials):
        trial = study.ask({"x": optuna.distributions.IntDistribution(0, 9)})
        trial.set_user_attr("examples", 4)
        study.tell(trial, [0.5 + i / 10, 100.0 - i])


def complete_values(path: Path) -> dict[int, list[float]]:
    study = optuna.load_study(study_name="st", storage=open_storage(path))
    return {t.number: t.values for t in study.get_trials(states=(TrialState.COMPLETE,))}


def test_a_last_record_cut_at_every_offset_is_recovered(tmp_path, caplog):
    original = tmp_path / "orig.log"
    make_journal(original)
    data = original.read_bytes()
    last = data.rstrip(b"\n").rfind(b"\n") + 1          # where the last record starts
    everything = complete_values(original)
    assert len(everything) == 3
    journal = tmp_path / "st" / "journal.log"
    journal.parent.mkdir()
    for cut in range(last + 1, len(data)):              # every torn length of the last record
        for old in journal.parent.glob("journal.log.torn-*"):
            old.unlink()
        journal.write_bytes(data[:cut])
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            kept = complete_values(journal)
        whole = cut == len(data) - 1                    # only the newline missing: the record is whole
        assert kept == (everything if whole else {n: v for n, v in everything.items() if n < 2}), cut
        messages = [r.getMessage() for r in caplog.records if "journal" in r.getMessage()]
        assert len(messages) == 1 and ("completed it" if whole else "torn record") in messages[0], cut
        backups = list(journal.parent.glob("journal.log.torn-*"))
        if not whole:
            assert len(backups) == 1 and backups[0].read_bytes() == data[last:cut]
        # The recovered journal takes new records and replays them: nothing is glued to a torn line.
        study = optuna.load_study(study_name="st", storage=open_storage(journal))
        study.tell(study.ask({"x": optuna.distributions.IntDistribution(0, 9)}), [0.9, 1.0])
        assert len(complete_values(journal)) == len(kept) + 1, cut
        assert run_cli(["status", "st", "--storage", str(journal)]) == 0


@pytest.mark.parametrize("damage", ["middle", "garbage-line-at-end", "not-an-operation"])
def test_mid_file_corruption_is_refused_and_repaired(tmp_path, damage, capsys):
    journal = tmp_path / "st" / "journal.log"
    journal.parent.mkdir()
    make_journal(journal)
    lines = journal.read_bytes().splitlines(keepends=True)
    bad = {"middle": 4, "garbage-line-at-end": len(lines) + 1, "not-an-operation": 6}[damage]
    if damage == "middle":
        lines[bad - 1] = lines[bad - 1][:10] + b"\x00garbled\n"
    elif damage == "garbage-line-at-end":
        lines.append(b"hello world\n")
    else:
        lines[bad - 1] = b'{"hello": 1}\n'
    journal.write_bytes(b"".join(lines))
    size = journal.stat().st_size

    with pytest.raises(SpikepruneError, match=f"corrupt at line {bad} .*--repair"):
        open_storage(journal)
    capsys.readouterr()
    assert run_cli(["status", "st", "--run-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"line {bad}" in err[0]
    assert run_cli(["check", "st", "--run-dir", str(tmp_path)]) == 1
    assert f"line {bad} is corrupt" in capsys.readouterr().out
    assert journal.stat().st_size == size, "check without --repair changed the journal"

    assert run_cli(["check", "st", "--run-dir", str(tmp_path), "--repair"]) == 0
    out = capsys.readouterr().out
    assert f"cut at corrupt line {bad}" in out and out.strip().endswith("ok")
    backup = next(journal.parent.glob("journal.log.corrupt-*"))
    assert journal.read_bytes() + backup.read_bytes() == b"".join(lines)
    complete_values(journal)  # opens without complaint
    assert run_cli(["check", "st", "--run-dir", str(tmp_path)]) == 0


def test_check_reports_an_intact_study(tmp_path, capsys):
    make_journal(tmp_path / "st" / "journal.log")
    assert run_cli(["check", "st", "--run-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "intact" in out and "3 trials: 3 complete" in out


@pytest.mark.integration
def test_a_search_resumes_after_its_last_record_was_torn(tiny_prepared, tmp_path, ray_local):
    space = tmp_path / "space.yaml"
    space.write_text("name: tiny" + TINY_KNOBS)
    settings = dict(prepared=tiny_prepared, space=space, study_name="t", workers=1, run_dir=tmp_path,
                    max_examples=16, progress=False, early_stopping=False)
    # The first driver is another process, gone when its journal is found torn (as after a crash).
    subprocess.run([sys.executable, "-m", "spikeprune", "search", "--prepared", str(tiny_prepared), "--space",
                    str(space), "--study", "t", "--n-trials", "2", "--workers", "1", "--run-dir", str(tmp_path),
                    "--max-examples", "16", "--no-early-stopping", "--ray-address", ray_local, "--quiet"],
                   check=True, capture_output=True)
    journal = tmp_path / "t" / "journal.log"
    data = journal.read_bytes()
    last = data.rstrip(b"\n").rfind(b"\n") + 1
    journal.write_bytes(data[:last + (len(data) - last) // 2])   # the driver died mid-write
    shutil.copy(journal, tmp_path / "torn.log")
    before = {t.number: t.values for t in optuna.load_study(study_name="t", storage=open_storage(tmp_path / "torn.log"))
              .get_trials(states=(TrialState.COMPLETE,))}
    assert before, "no trial was finished before the torn record"

    study = run_search(SearchSettings(n_trials=3, **settings)).study
    after = {t.number: t for t in study.trials}
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 3
    for number, values in before.items():  # every finished trial kept, not re-run
        assert after[number].state == TrialState.COMPLETE and after[number].values == values
    assert run_cli(["check", "t", "--run-dir", str(tmp_path)]) == 0


def test_a_live_writer_recovers_a_tail_torn_by_a_dead_writer(tmp_path, caplog):
    """Two drivers share a journal; one dies inside ``write``: the other's next append must not be
    glued onto the torn bytes (that made a corrupt line in the middle that no driver could open)."""
    journal = tmp_path / "st" / "journal.log"
    journal.parent.mkdir()
    make_journal(journal)
    study = optuna.load_study(study_name="st", storage=open_storage(journal))   # the live driver
    everything = complete_values(journal)
    last = journal.read_bytes().rstrip(b"\n").rsplit(b"\n", 1)[-1]
    with open(journal, "ab") as f:                                               # the dead driver
        f.write(last[:len(last) // 2])
    with caplog.at_level(logging.WARNING):
        study.tell(study.ask({"x": optuna.distributions.IntDistribution(0, 9)}), [0.9, 1.0])
    assert any("torn record" in r.getMessage() for r in caplog.records)
    assert inspect_journal(journal, replay=True).ok
    (backup,) = journal.parent.glob("journal.log.torn-*")
    assert backup.read_bytes() == last[:len(last) // 2]
    assert complete_values(journal) == {**everything, 3: [0.9, 1.0]}


@pytest.mark.integration
def test_an_append_that_fills_the_disk_leaves_no_partial_record(tmp_path, small_disk):
    """A record that does not fit on the disk is not half-written: the retry after space is freed
    appends it whole, and the journal stays readable by every driver."""
    journal = small_disk.path / "st" / "journal.log"
    journal.parent.mkdir()
    make_journal(journal)
    storage = open_storage(journal)
    study = optuna.load_study(study_name="st", storage=storage)
    trial = study.ask({"x": optuna.distributions.IntDistribution(0, 9)})
    if journal.stat().st_size % 4096 == 0:   # not a whole number of pages: some bytes still fit
        trial.set_user_attr("pad", 1)
    size = journal.stat().st_size
    small_disk.fill()
    big = "x" * 10_000   # longer than the slack in the journal's last page
    with pytest.raises(OSError) as error:
        trial.set_user_attr("big", big)
    assert error.value.errno == errno.ENOSPC
    assert journal.stat().st_size == size and journal.read_bytes().endswith(b"\n")
    small_disk.free()
    trial.set_user_attr("big", big)
    study.tell(trial, [0.9, 1.0])
    reread = optuna.load_study(study_name="st", storage=open_storage(journal))
    assert reread.trials[3].user_attrs["big"] == big and reread.trials[3].values == [0.9, 1.0]


@pytest.mark.integration
def test_opening_a_torn_journal_on_a_full_disk_says_so_and_changes_nothing(small_disk):
    """Recovering a torn tail saves it to a backup first; on a full disk that cannot be written:
    opening says the disk is full (naming the folder), leaves no half-written backup, and cuts nothing."""
    journal = small_disk.path / "st" / "journal.log"
    journal.parent.mkdir()
    make_journal(journal)
    last = journal.read_bytes().rstrip(b"\n").rsplit(b"\n", 1)[-1]
    with open(journal, "ab") as f:
        f.write(last[:len(last) // 2])
    data = journal.read_bytes()
    small_disk.fill()
    with pytest.raises(SpikepruneError, match=f"the disk of {journal.parent} is full .*free space there"):
        open_storage(journal)
    assert journal.read_bytes() == data
    assert sorted(p.name for p in journal.parent.iterdir()) == ["journal.log", "journal.log.flock"]
    small_disk.free()
    assert len(complete_values(journal)) == 3   # the torn bytes are cut, as on any open; nothing else
    assert len(list(journal.parent.glob("journal.log.torn-*"))) == 1
