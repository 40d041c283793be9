"""The prepare cache cannot lie: it is reused only for the command that made it and with the files
it wrote; a truncated weight file, another seed or base, or changed GLUE files are refused with
the fix, and bad arguments are refused before any training."""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from spikeprune.records import PreparedRecord

from helpers import run_cli


@pytest.fixture
def run_root(tiny_prepared, tmp_path) -> Path:
    """A private copy of the run folder holding the tiny base (prepared/sst2-tiny)."""
    root = tmp_path / "runs"
    shutil.copytree(tiny_prepared.parent.parent, root)
    return root


def prepare(root: Path, glue: Path, *extra: str) -> list[str]:
    return ["prepare", "--task", "sst2", "--preset", "tiny", "--run-dir", str(root), "--glue-dir", str(glue), *extra]


def test_the_same_command_reuses_the_cache(run_root, glue_dir, capsys):
    record = PreparedRecord.read(run_root / "prepared" / "sst2-tiny")
    assert record.key["seed"] == 0 and record.key["data"]["dev.tsv"]["size"] > 0
    assert record.files["student/model.safetensors"]["size"] > 0 and len(record.files) >= 8
    start = time.monotonic()
    assert run_cli(prepare(run_root, glue_dir)) == 0
    assert "cached in" in capsys.readouterr().out and time.monotonic() - start < 30


@pytest.mark.parametrize("change, extra, message", [
    ("truncate", (), "student/model.safetensors has 100 bytes"),
    ("flip-a-byte", (), "teacher/model.safetensors changed since it was written"),
    ("delete", (), "importance.safetensors is missing"),
    (None, ("--seed", "3"), "another seed 0 (this command: 3)"),
    (None, ("--set", "distill_epochs=2"), "another set of preset values (distill_epochs differ)"),
    ("other-base", (), "another base"),
])
def test_a_cache_that_does_not_match_is_refused(run_root, glue_dir, change, extra, message, capsys, tmp_path):
    base = run_root / "prepared" / "sst2-tiny"
    if change == "truncate":
        with open(base / "student" / "model.safetensors", "r+b") as f:
            f.truncate(100)
    elif change == "flip-a-byte":
        weights = base / "teacher" / "model.safetensors"
        data = bytearray(weights.read_bytes())
        data[-1] ^= 0xFF  # same size: only the hash can tell
        weights.write_bytes(bytes(data))
    elif change == "delete":
        (base / "importance.safetensors").unlink()
    elif change == "other-base":
        teacher = tmp_path / "other-base"
        shutil.copytree(base / "teacher", teacher)
        extra = ("--base", str(teacher))
    before = sorted(p.name for p in base.rglob("*"))
    capsys.readouterr()
    assert run_cli(prepare(run_root, glue_dir, *extra)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and "--run-dir" in err[0], err
    assert sorted(p.name for p in base.rglob("*")) == before


def test_a_record_older_than_a_preset_field_was_made_at_its_default(run_root, glue_dir, capsys):
    path = run_root / "prepared" / "sst2-tiny" / "prepare.json"
    original = path.read_text()
    data = json.loads(original)
    for name in ("elastic_targets", "elastic_bf16"):
        del data["key"]["preset"][name]
    path.write_text(json.dumps(data))
    try:
        assert run_cli(prepare(run_root, glue_dir)) == 0
        assert "cached in" in capsys.readouterr().out
        assert run_cli(prepare(run_root, glue_dir, "--set", "elastic_targets=largest")) == 2
        assert "(elastic_targets differ)" in capsys.readouterr().err
    finally:
        path.write_text(original)


def test_an_older_record_is_reused_but_said_unverified(run_root, glue_dir, capsys):
    path = run_root / "prepared" / "sst2-tiny" / "prepare.json"
    data = json.loads(path.read_text())
    del data["key"], data["files"]
    data["format"] = 0
    path.write_text(json.dumps(data))
    assert run_cli(prepare(run_root, glue_dir)) == 0
    assert "files are unverified" in capsys.readouterr().out
    assert run_cli(prepare(run_root, glue_dir, "--seed", "5")) == 2  # what it did record is still compared


def test_an_unfinished_prepare_of_another_command_is_not_resumed(tmp_path, glue_dir, capsys):
    out = tmp_path / "prepared" / "sst2-tiny"
    PreparedRecord.write_key(out, {"task": "sst2", "preset": {}, "seed": 9, "base": "x", "data": {}})
    assert run_cli(prepare(tmp_path, glue_dir)) == 2
    assert "unfinished prepare with another seed 9" in capsys.readouterr().err
