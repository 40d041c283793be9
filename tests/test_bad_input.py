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

from helpers import free_port, run_cli

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

    def glue_without_train(self, folder: str, header: str) -> str:
        """A GLUE folder whose task ``folder`` holds a one-row dev.tsv and no train.tsv."""
        task = self.root / "glue" / folder
        task.mkdir(parents=True)
        (task / "dev.tsv").write_text(header + "0\tQ?\tS.\tentailment\n")
        return str(task.parent)

    def study(self) -> None:
        """A journal study under ``run`` with one complete trial, as ``spikeprune search`` writes it."""
        from spikeprune.search._storage import default_storage, open_storage

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
    "n-trials-zero": (lambda e: search(e, "--n-trials", "0"), "--n-trials: '0' is not an integer >= 1"),
    "workers-negative": (lambda e: search(e, "--workers", "-2"), "--workers"),
    "trial-timeout-zero": (lambda e: search(e, "--trial-timeout", "0"), "--trial-timeout: '0' is not a number > 0"),
    "trial-function-not-module-function": (lambda e: search(e, "--trial-function", "run_trial"),
                                           "is not of the form module:function"),
    "kernel-module-missing": (lambda e: search(e, "--kernel", "no_such_module:run"), "install it or put it on PYTHONPATH"),
    "study-name-escapes": (lambda e: search(e, "--study", "../x"), "use 1-64 letters, digits"),
    "sampler-unknown": (lambda e: search(e, "--sampler", "cmaes"), "invalid choice"),
    "profile-space-unknown": (lambda e: ["profile", "--prepared", str(e.prepared), "--space", "nope"],
                              "neither a file nor a preset"),
    "profile-base-missing": (lambda e: ["profile", "--prepared", str(e.root / "nobase")], "nobase"),
    "n-trials-not-a-number": (lambda e: search(e, "--n-trials", "many"), "'many' is not an integer"),
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
    # QNLI with its dev set but not its train set (as ../shared/glue has it), the hub offline
    "prepare-glue-split-offline": (lambda e: ["prepare", "--task", "qnli", "--preset", "tiny", "--glue-dir",
                                              e.glue_without_train("QNLI", "index\tquestion\tsentence\tlabel\n"),
                                              "--run-dir", str(e.run)],
                                   "QNLI/train.tsv not found and the Hugging Face hub is offline"),
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


# ---- generated: every numeric option of every subcommand against values of the wrong type or sign
def _export(e: Env, *extra: str) -> list[str]:
    e.study()
    return ["export", "st", "--run-dir", str(e.run), *extra]


def _prepare(e: Env, *extra: str) -> list[str]:
    return ["prepare", "--preset", "tiny", "--run-dir", str(e.run), *extra]


#: subcommand -> (argv builder, {option: bad values})
NUMERIC: dict[str, tuple[Callable[..., list[str]], dict[str, tuple[str, ...]]]] = {
    "search": (search, {"--n-trials": ("-1", "1.5", "nan"), "--workers": ("0", "x"), "--max-examples": ("0", "-3"),
                        "--max-failures": ("0",), "--cpus-per-trial": ("0", "-1", "nan", "inf"),
                        "--gpus-per-trial": ("-1", "nan"), "--trial-timeout": ("-5", "nan"),
                        "--storage-patience": ("-1", "inf"), "--seed": ("-1", "x"),
                        "--profile-examples": ("0", "x")}),
    "profile": (lambda e, *x: ["profile", "--prepared", str(e.prepared), *x], {"--examples": ("0", "-2", "x")}),
    "evaluate": (lambda e, *x: evaluate(e.prepared, *x), {"--max-examples": ("0", "-3", "x", "1e3"),
                                                         "--seed": ("-1",)}),
    "export": (_export, {"--trial": ("-1", "x"), "--max-sops": ("-1", "nan"), "--min-metric": ("nan", "x")}),
    "dashboard": (lambda e, *x: ["dashboard", "st", "--run-dir", str(e.run), *x], {"--port": ("0", "70000", "x")}),
    "prepare": (_prepare, {"--seed": ("-1", "x")}),
    "demo": (lambda e, *x: ["demo", "--run-dir", str(e.run), *x], {"--n-trials": ("0",), "--max-drop": ("-0.1", "nan"),
                                                                   "--workers": ("-1",)}),
}
for _cmd, (_build, _options) in NUMERIC.items():
    for _opt, _values in _options.items():
        for _value in _values:
            CASES[f"gen-{_cmd}{_opt}={_value}"] = (
                lambda e, b=_build, o=_opt, v=_value: b(e, o, v), f"argument {_opt}: {_value!r} is not")

#: --set FIELD=VALUE of prepare: wrong types and signs, all refused before any training.
for _field, _value in [("distill_examples", "-5"), ("teacher_lr", "-1e-3"),
                       ("teacher_lr", "nan"), ("batch_size", "1.5"), ("timesteps", "0"),
                       ("temperature", "0"), ("weight_decay", "-0.1"), ("max_length", "many"),
                       ("family", "snn"), ("levels", "0"), ("calibration_percentile", "101"),
                       ("residual_thresholds", "channel"), ("elastic_targets", "student"), ("elastic_average", "1"),
                       ("elastic_small_weight", "0"),
                       ("length_bucket", "-1")]:
    CASES[f"gen-prepare-set-{_field}={_value}"] = (
        lambda e, f=_field, v=_value: _prepare(e, "--set", f"{f}={v}"), f"{_field}")

#: A compression config with a wrong value in each field: types, signs, fractions, booleans.
for _key, _value, _hint in [("heads", "two", "is not a whole number"), ("heads", "1.5", "is not a whole number"),
                            ("heads", "true", "is not a whole number"), ("heads", "0", "keep 1..2"),
                            ("heads", "[1]", "give one value per layer"), ("neurons", "-4", "keep 1..64"),
                            ("timesteps", "0", "at least 1 timestep"), ("timesteps", "2.5", "whole number"),
                            ("weight_bits", "3", "is not supported"), ("weight_bits", "yes", "is not supported"),
                            ("recovery_steps", "-1", "recovery_steps must be >= 0"),
                            ("recovery_steps", "0.5", "whole number"), ("head", "1", "unknown")]:
    def _config_case(e: Env, k=_key, v=_value) -> list[str]:
        path = e.root / "c.yaml"
        path.write_text(f"{k}: {v}\n")
        return evaluate(e.prepared, "--config", str(path))
    CASES[f"gen-config-{_key}={_value}"] = (_config_case, _hint)


def _file(e: Env) -> Path:
    path = e.root / "a-file"
    path.write_text("x")
    return path


def _folder(e: Env) -> Path:
    path = e.root / "a-folder"
    path.mkdir(exist_ok=True)
    return path


#: Paths of every kind where they do not belong: outputs that are folders or under a file, inputs
#: that are files, folders or missing.
PATHS: dict[str, tuple[Callable[[Env, Path], list[str]], Callable[[Env], Path], str]] = {
    "report-out-folder": (lambda e, p: (e.study(), ["report", "st", "--run-dir", str(e.run), "--out", str(p)])[1],
                          _folder, "is a folder"),
    "report-out-under-file": (lambda e, p: (e.study(), ["report", "st", "--run-dir", str(e.run), "--out",
                                                        str(p / "r.html")])[1], _file, "which is a file"),
    "trials-out-folder": (lambda e, p: (e.study(), ["trials", "st", "--run-dir", str(e.run), "--out", str(p)])[1],
                          _folder, "is a folder"),
    "trials-out-under-file": (lambda e, p: (e.study(), ["trials", "st", "--run-dir", str(e.run), "--out",
                                                        str(p / "t.csv")])[1], _file, "which is a file"),
    "compare-out-folder": (lambda e, p: (e.study(), ["compare", "st", "--run-dir", str(e.run), "--out", str(p)])[1],
                           _folder, "is a folder"),
    "evaluate-json-folder": (lambda e, p: evaluate(e.prepared, "--json", str(p)), _folder, "is a folder"),
    "evaluate-json-under-file": (lambda e, p: evaluate(e.prepared, "--json", str(p / "x.json")), _file, "is a file"),
    "export-out-file": (lambda e, p: _export(e, "--trial", "0", "--out", str(p)), _file, "is a file; give a folder"),
    "evaluate-config-folder": (lambda e, p: evaluate(e.prepared, "--config", str(p)), _folder, "give a YAML file"),
    "evaluate-config-empty": (lambda e, p: evaluate(e.prepared, "--config", str(p)),
                              lambda e: (e.root / "empty.yaml", (e.root / "empty.yaml").write_text(""))[0],
                              "must be a YAML mapping"),
    "evaluate-prepared-file": (lambda e, p: evaluate(p), _file, "is not a prepared base"),
    "evaluate-prepared-empty-folder": (lambda e, p: evaluate(p), _folder, "is not a prepared base"),
    "search-prepared-file": (lambda e, p: ["search", "--prepared", str(p), "--run-dir", str(e.run), "--quiet"],
                             _file, "is not a prepared base"),
    "search-space-folder": (lambda e, p: search(e, "--space", str(p)), _folder, ""),
    "evaluate-glue-dir-file": (lambda e, p: evaluate(e.prepared, "--glue-dir", str(p)), _file, "--glue-dir"),
    "prepare-base-file": (lambda e, p: _prepare(e, "--base", str(p)), _file, "give a checkpoint folder"),
    "prepare-base-no-config": (lambda e, p: _prepare(e, "--base", str(p)), _folder, "has no config.json"),
    "prepare-base-no-tokenizer": (lambda e, p: _prepare(e, "--base", str(p)),
                                  lambda e: (_folder(e), (_folder(e) / "config.json").write_text("{}"))[0],
                                  "has no tokenizer"),
    "prepare-base-missing": (lambda e, p: _prepare(e, "--base", str(p / "nothing")), _folder, "does not exist"),
    "prepare-device-cuda": (lambda e, p: _prepare(e, "--device", "cuda"), _folder, "use --device cpu"),
    "prepare-device-unknown": (lambda e, p: _prepare(e, "--device", "quantum"), _folder, "not a torch device"),
    "check-unknown-study": (lambda e, p: ["check", "nope", "--run-dir", str(e.run)], _folder, "no study journal"),
    "check-storage-folder": (lambda e, p: ["check", "--storage", str(p)], _folder, "no journal file"),
    "search-reference-unknown": (lambda e, p: search(e, "--reference", "energy_uj=3"), _folder, "not an objective"),
    "search-reference-ideal": (lambda e, p: search(e, "--reference", "metric=1.5"), _folder, "below 1"),
    "search-reference-form": (lambda e, p: search(e, "--reference", "metric"), _folder, "NAME=VALUE"),
    "search-gpus-without-gpu": (lambda e, p: search(e, "--gpus-per-trial", "1"), _folder, "no CUDA GPU"),
    # A port nobody listens on (the folder's name is not a port): refused at once, before any storage.
    "search-ray-address-unreachable": (lambda e, p: search(e, "--ray-address", f"127.0.0.1:{free_port()}"),
                                       _folder, "cannot reach the Ray cluster"),
    "space-reference-bad": (lambda e, p: search(e, space=SPACE + "reference: {sops: -1}\n"), _folder, "above 0"),
}
for _name, (_build_path, _make, _hint) in PATHS.items():
    CASES[f"path-{_name}"] = (lambda e, b=_build_path, m=_make: b(e, m(e)), _hint)


def test_a_taken_dashboard_port_is_one_line(tmp_path, capsys):
    import socket

    env = Env(tmp_path, tmp_path)
    env.study()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        code = run_cli(["dashboard", "st", "--run-dir", str(env.run), "--port", str(taken.getsockname()[1])])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "pick another --port" in err[0], err


def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


def test_the_table_is_wide_enough():
    assert len(CASES) >= 80


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
