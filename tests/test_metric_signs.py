"""Searches whose dense baseline scores <= 0 finish, report and export: CoLA's Matthews correlation
of the tiny student is 0.0 (it predicts one class) and STS-B's Pearson on 16 dev examples is
negative. Real prepare, real Ray, real journal."""
from __future__ import annotations

import optuna
import pytest

from spikeprune import SearchSettings, analyse_study, run_search, study_status
from spikeprune.training._prepare import prepare
from spikeprune.cli import main as cli_main
from spikeprune.records import StudyRecord

from tiny_spaces import TINY_KNOBS

pytestmark = pytest.mark.integration  # every test here starts Ray, PostgreSQL or a cluster

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.mark.parametrize("task, reference", [("cola", None), ("stsb", ["metric=-0.9"])])
def test_a_search_with_a_baseline_at_or_below_zero(task, reference, glue_dir, tmp_path, ray_local, capsys):
    prepared = prepare(task, glue_dir, tmp_path, preset="tiny")
    space = tmp_path / "space.yaml"
    space.write_text("name: tiny" + TINY_KNOBS)
    study = run_search(SearchSettings(prepared=prepared, space=space, study_name="s", n_trials=3, workers=1,
                                      run_dir=tmp_path, max_examples=16, progress=True, early_stopping=False,
                                      reference=reference)).study
    record = StudyRecord.read(study)
    assert record.reference is not None and record.reference["metric"] <= 0, "precondition: baseline <= 0"
    assert record.reference_given == (None if reference is None else {"metric": -0.9})
    analysis = analyse_study(study)
    assert len(study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))) == 3
    assert analysis.reference is not None and analysis.history[0][1] > 0  # hypervolume from trial 0
    if reference:
        assert analysis.reference.worst[0] == -0.9
    assert "HV -" not in capsys.readouterr().err

    assert cli_main(["status", "s", "--run-dir", str(tmp_path)]) == 0
    assert cli_main(["report", "s", "--run-dir", str(tmp_path)]) == 0
    assert 'id="hypervolume"' in (tmp_path / "s" / "report.html").read_text()
    assert cli_main(["export", "s", "--trial", "0", "--run-dir", str(tmp_path)]) == 0
    assert (tmp_path / "s" / "export").is_dir()
    assert "HV" in study_status(str(tmp_path / "s" / "journal.log"), "s")
