"""Bad input on every surface, table-driven: the command line, space files, model folders, GLUE
folders and storage URLs. Each must give exactly one stderr line ``error: ...`` that says what to do,
a non-zero exit code, and leave nothing half-written behind."""
from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest

from spikeprune.cli import main

optuna.logging.set_verbosity(optuna.logging.WARNING)

SPACE = """
name: tiny
heads: {per_layer: true, min: 1, max: 2}
timesteps: {min: 1, max: 2}
objectives: [{name: metric, direction: maximize}, {name: sops, direction: minimize}]
"""


@dataclass
class Env:
    """The folders one case works in: ``run`` is watched for leftovers; ``base`` is a private
    copy of the tiny prepared base that a case may break."""

    root: Path
    prepared: Path

    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def base(self) -> Path:
        return self.root / "base"

    def space(self, text: str = SPACE) -> str:
        path = self.root / "space.yaml"
        path.write_text(text)
        return str(path)

    def copy_base(self) -> Path:
        if not self.base.exists():
            shutil.copytree(self.prepared, self.base)
        return self.base

    def fake_glue(self, dev: str | None) -> str:
        """A GLUE folder holding SST-2/dev.tsv with the given text (None: the folder but no file)."""
        folder = self.root / "glue" / "SST-2"
        folder.mkdir(parents=True)
        if dev is not None:
            (folder / "dev.tsv").write_text(dev)
        return str(folder.parent)

    def study(self) -> None:
        """A journal study under ``run`` with one complete trial, as ``spikeprune search`` writes it."""
        from spikeprune._search.storage import default_storage, open_storage

        study = optuna.create_study(storage=open_storage(default_storage(self.run, "st")), study_name="st",
                                    directions=["maximize", "minimize"])
        study.set_user_attr("spikeprune", {"task": "sst2", "prepared": str(self.prepared), "energy": "float45nm",
                                           "objectives": [{"name": "metric", "direction": "maximize"},
                                                          {"name": "sops", "direction": "minimize"}]})
        study.add_trial(optuna.trial.create_trial(values=[0.5, 100.0], user_attrs={
            "compression": {"heads": 1, "neurons": None, "timesteps": 1, "weight_bits": 32, "recovery_steps": 0},
            "examples": 4, "fidelity": 1.0}))


def search(env: Env, *extra: str, space: str = SPACE) -> list[str]:
    return ["search", "--prepared", str(env.prepared), "--space", env.space(space), "--run-dir", str(env.run),
            "--max-examples", "4", "--quiet", *extra]


def evaluate(prepared: Path | str, *extra: str) -> list[str]:
    return ["evaluate", "--prepared", str(prepared), "--max-examples", "4", *extra]


def broken_base(change: Callable[[Path], None]) -> Callable[[Env], list[str]]:
    """A case that evaluates a copy of the base broken by ``change``."""
    def case(env: Env) -> list[str]:
        change(env.copy_base())
        return evaluate(env.base)
    return case


def _set_config(path: Path, **values) -> None:
    config = json.loads(path.read_text())
    config.update(values)
    path.write_text(json.dumps(config))


#: id -> (build the argv in the env, a piece of the expected message that says what to do)
CASES: dict[str, tuple[Callable[[Env], list[str]], str]] = {
    # ---- command line
    "n-trials-zero": (lambda e: search(e, "--n-trials", "0"), "n_trials must be >= 1"),
    "workers-negative": (lambda e: search(e, "--workers", "-2"), "workers must be >= 1"),
    "trial-timeout-zero": (lambda e: search(e, "--trial-timeout", "0"), "trial_timeout must be > 0"),
    "kernel-not-module-function": (lambda e: search(e, "--kernel", "run_trial"), "is not of the form module:function"),
    "kernel-module-missing": (lambda e: search(e, "--kernel", "no_such_module:run"), "install it or put it on PYTHONPATH"),
    "study-name-escapes": (lambda e: search(e, "--study", "../x"), "use 1-64 letters, digits"),
    "sampler-unknown": (lambda e: search(e, "--sampler", "cmaes"), "invalid choice"),
    "n-trials-not-a-number": (lambda e: search(e, "--n-trials", "many"), "invalid int value"),
    "energy-preset-unknown": (lambda e: search(e, "--energy", "float7nm"), "float45nm"),
    "evaluate-config-missing": (lambda e: evaluate(e.prepared, "--config", str(e.root / "none.yaml")), "none.yaml"),
    "status-unknown-study": (lambda e: ["status", "nope", "--run-dir", str(e.run)], "no study journal at"),
    "export-unknown-trial": (lambda e: (e.study(), ["export", "st", "--trial", "7", "--run-dir", str(e.run)])[1],
                             "has no trial 7"),
    "export-base-missing": (lambda e: (e.study(), ["export", "st", "--trial", "0", "--run-dir", str(e.run),
                                                   "--prepared", str(e.root / "gone")])[1],
                            "run `spikeprune prepare` first"),
    # ---- space files
    "space-missing": (lambda e: search(e, "--space", str(e.root / "none.yaml")), "presets are"),
    "space-not-yaml": (lambda e: search(e, space="heads: [1, 2\n"), "is not valid YAML"),
    "space-unknown-key": (lambda e: search(e, space="head: 2\n"), "known keys are"),
    "space-range-reversed": (lambda e: search(e, space="heads: {min: 2, max: 1}\n"), "is below min"),
    "space-beyond-model": (lambda e: search(e, space="heads: {min: 1, max: 3}\n"), "but the model has 2 heads"),
    "space-wrong-direction": (lambda e: search(e, space="objectives: [{name: sops, direction: maximize}]\n"),
                              "sops must be minimized"),
    # ---- model folders
    "prepared-missing": (lambda e: evaluate(e.root / "nothing"), "run `spikeprune prepare` first"),
    "prepare-json-corrupt": (broken_base(lambda b: (b / "prepare.json").write_text("{not json")), "prepare.json"),
    "weights-missing": (broken_base(lambda b: (b / "student" / "model.safetensors").unlink()),
                        "must hold config.json and model.safetensors"),
    "weights-corrupt": (broken_base(lambda b: (b / "student" / "model.safetensors").write_bytes(b"\x00" * 64)),
                        "is not a readable safetensors file"),
    "config-not-json": (broken_base(lambda b: (b / "student" / "config.json").write_text("hidden_size: 32")),
                        "config.json"),
    "config-mismatches-weights": (broken_base(lambda b: _set_config(b / "student" / "config.json", hidden_size=48)),
                                  "config and weights disagree"),
    "importance-missing": (broken_base(lambda b: (b / "importance.safetensors").unlink()),
                           "`spikeprune prepare`"),
    "tokenizer-missing": (broken_base(lambda b: [(b / "student" / f).unlink() for f in
                                                 ("tokenizer.json", "tokenizer_config.json")]),
                          "tokenizer"),
    # ---- data folders
    "glue-dir-missing": (lambda e: evaluate(e.prepared, "--glue-dir", str(e.root / "no-glue")), "pass --glue-dir"),
    "glue-file-missing": (lambda e: evaluate(e.prepared, "--glue-dir", e.fake_glue(None)), "download_glue_data.py layout"),
    "glue-row-malformed": (lambda e: evaluate(e.prepared, "--glue-dir", e.fake_glue("sentence\tlabel\nfine\t1\nbroken row\n")),
                           "fix or delete this row"),
    "glue-label-invalid": (lambda e: evaluate(e.prepared, "--glue-dir", e.fake_glue("sentence\tlabel\nfine\t7\n")),
                           "fix or delete this row"),
    "prepare-set-unknown-field": (lambda e: ["prepare", "--preset", "tiny", "--set", "epochs=2", "--run-dir", str(e.run)],
                                  "is not FIELD=VALUE with a preset field"),
    "prepare-set-wrong-type": (lambda e: ["prepare", "--preset", "tiny", "--set", "distill_examples=many",
                                          "--run-dir", str(e.run)], "expected a value like 48"),
    "prepare-glue-missing": (lambda e: ["prepare", "--task", "sst2", "--preset", "tiny", "--glue-dir",
                                        str(e.root / "no-glue"), "--run-dir", str(e.run)], "pass --glue-dir"),
    # ---- storage
    "storage-scheme": (lambda e: search(e, "--storage", "mysql://u@localhost/db"), "use a journal file path"),
    "storage-unreachable": (lambda e: search(e, "--storage", "postgresql+psycopg2://u:secret@127.0.0.1:1/db"),
                            "is the database server running"),
    "storage-bad-port": (lambda e: search(e, "--storage", "postgresql+psycopg2://u@localhost:port/db"),
                         "is not a valid SQLAlchemy URL"),
    "storage-journal-is-folder": (lambda e: search(e, "--storage", str(e.root)), "give the journal file"),
    "report-storage-scheme": (lambda e: ["report", "st", "--storage", "redis://localhost/0",
                                         "--out", str(e.run / "r.html")], "use a journal file path"),
}


def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


def run_cli(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as e:  # argparse's own errors
        return e.code


def test_the_table_is_wide_enough():
    assert len(CASES) >= 20


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_gives_one_line_and_leaves_nothing(case, tmp_path, tiny_prepared, glue_dir, capsys, monkeypatch):
    monkeypatch.setenv("SPIKEPRUNE_GLUE_DIR", str(glue_dir))
    env = Env(tmp_path, tiny_prepared)
    env.run.mkdir()
    build, hint = CASES[case]
    argv = build(env)
    before, base_before = listing(env.run), listing(env.base)
    capsys.readouterr()
    code = run_cli(argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code not in (0, None), err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert hint in lines[0], lines[0]
    assert "secret" not in err
    assert listing(env.run) == before, "a failed command left files behind"
    assert listing(env.base) == base_before
