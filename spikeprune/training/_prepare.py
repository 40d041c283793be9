"""``prepare``: the whole pipeline that makes a prepared base, the starting point of every search.

The folder ``<run_root>/prepared/<task>-<preset>/`` holds ``teacher/`` (Hugging Face format),
``student/`` (save_pretrained), the head/neuron importance scores and ``prepare.json``
(``records.PreparedRecord``), written last: a folder with it is complete. A time-elastic base
also keeps the converted student it was made from, the faithful T = 16 one (``converted/``):
teacher -> converted student (QAT) -> importance -> θ table -> elastic training.
"""
from __future__ import annotations

import json
import time
from collections.abc import Iterable
from pathlib import Path

from torch import Tensor

from spikeprune.models._families import family_of
from spikeprune.models._compress import IMPORTANCE_NAME, compute_importance, load_importance, save_importance
from spikeprune.models._evaluation import evaluate_model
from spikeprune.data._glue import batches, get_task, load_glue
from spikeprune.data._metrics import main_metric
from spikeprune.models._model import SpikingBertForSequenceClassification
from spikeprune.errors import SpikepruneError
from spikeprune.records import PreparedRecord

from spikeprune.training._cache import cache_key, check_base, check_cached, check_device, check_preset, file_digests, glue_digest, key_difference
from spikeprune.training._convert import build_student, calibrate_thresholds, elastic_from_converted, standardize_readout
from spikeprune.training._distill import distill_student
from spikeprune.training._elastic import train_elastic
from spikeprune.training._loop import configure_threads, load_split, stage_done
from spikeprune.training._presets import IMPORTANCE_BATCHES, THETA_TABLE_BATCHES, Preset, get_preset
from spikeprune.training._teacher import default_base, train_teacher


def prepare(task: str, glue_dir: str | Path | None, run_root: str | Path, preset: str | Preset = "quick",
            base: str | None = None, device: str = "cpu", seed: int = 0) -> Path:
    """Teacher, student and their dev scores in ``<run_root>/prepared/<task>-<preset>/``.

    Finished stages are kept and an interrupted one resumes, so re-running is cheap and safe.
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    spec = get_task(task)
    p = get_preset(preset, spec.name)
    check_preset(p)  # every argument before any work: a bad value costs no training
    check_device(device)
    check_base(base)
    for split in ("train", spec.dev_split):  # missing data is refused before any file is written
        if glue_dir is not None and not (Path(glue_dir) / spec.folder / spec.files[split]).is_file():
            load_glue(spec.name, split, glue_dir)
    configure_threads()
    out = Path(run_root) / "prepared" / f"{spec.name}-{p.name}"
    name = main_metric(spec.name)
    local = base is not None and Path(base).expanduser().exists()
    key = cache_key(spec.name, p, seed, str(Path(base).expanduser().resolve()) if local else base or default_base(),
                    glue_digest(None if glue_dir is None else Path(glue_dir) / spec.folder))
    if PreparedRecord.exists(out):
        done = PreparedRecord.read(out)
        note = check_cached(out, done, key)
        if note:
            print(note)
        print(f"{spec.name} dev {name} (cached in {out}): teacher {done.teacher_metrics[name]:.4f}, "
              f"student (T={done.timesteps[0]}) {done.student_metrics[name]:.4f}")
        return out
    started = PreparedRecord.read_key(out)
    if started is not None and key_difference(started, key) is not None:
        raise SpikepruneError(f"{out} holds an unfinished prepare with another {key_difference(started, key)}; "
                              f"prepare into another --run-dir, or delete {out} to start over")
    PreparedRecord.write_key(out, key)
    start = time.perf_counter()
    if not stage_done(out / "teacher"):
        train_teacher(spec.name, base, glue_dir, out, p, device=device, seed=seed)
    teacher = AutoModelForSequenceClassification.from_pretrained(out / "teacher").to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(out / "teacher")
    calibration = load_split(spec.name, "train", glue_dir, tokenizer, p.max_length,
                              IMPORTANCE_BATCHES * p.batch_size, seed + 1)

    def calibration_batches() -> Iterable[dict[str, Tensor]]:
        return batches(calibration, p.batch_size, pad_id=tokenizer.pad_token_id or 0)

    family = family_of(p.family)
    # A family made from another's (the elastic one) gets that student first, in its own stage.
    first = "student" if family.made_from is None else family.made_from
    if not stage_done(out / first) and not stage_done(out / "student"):
        made = family if family.made_from is None else family_of(family.made_from)
        student = build_student(teacher, p.timesteps, p.student_layers, task=spec.name, family=made.name,
                                levels=p.levels,
                                residual_thresholds=p.residual_thresholds if made.residual else "population")
        if made.calibrated:
            calibrate_thresholds(student, calibration_batches(), p.calibration_percentile)
        else:
            standardize_readout(student, calibration_batches())
        distill_student(student, teacher, spec.name, glue_dir, out, p, tokenizer=tokenizer,
                        device=device, seed=seed, stage=first)
    if family.made_from is not None and not stage_done(out / "student"):
        made = SpikingBertForSequenceClassification.from_pretrained(out / first).to(device)
        # Units are ranked once, on the student they are cut from, and the elastic training
        # teaches every config to keep them in that order: the scores stay the base's.
        if not (out / IMPORTANCE_NAME).is_file():
            print("importance of heads and FFN neurons ...", flush=True)
            save_importance(compute_importance(made, calibration_batches()), out / IMPORTANCE_NAME)
        scores = load_importance(out / IMPORTANCE_NAME, made.config)
        begun = time.perf_counter()
        elastic = elastic_from_converted(made, list(calibration_batches())[:THETA_TABLE_BATCHES], progress=lambda t: print(
            f"θ table: row T={t} of 16 ({time.perf_counter() - begun:.0f} s)", flush=True))
        train_elastic(elastic, teacher, scores, spec.name, glue_dir, out, p, tokenizer=tokenizer,
                      device=device, seed=seed)
    student = SpikingBertForSequenceClassification.from_pretrained(out / "student").to(device)

    dev = load_split(spec.name, spec.dev_split, glue_dir, tokenizer, p.max_length, p.eval_examples, seed)

    def dev_batches() -> Iterable[dict[str, Tensor]]:
        return batches(dev, p.eval_batch_size, sort_by_length=True, pad_id=tokenizer.pad_token_id or 0)

    t0 = time.perf_counter()
    teacher_metrics = evaluate_model(teacher, dev_batches(), spec.name).metrics
    t1 = time.perf_counter()
    # A family with an exact quantized twin is scored through it (the same metric, tested).
    student_metrics = evaluate_model(student, dev_batches(), spec.name,
                                     mode="twin" if family.sequential else "batched").metrics
    t2 = time.perf_counter()
    if family.made_from is None:
        save_importance(compute_importance(student, calibration_batches()), out / IMPORTANCE_NAME)
    t3 = time.perf_counter()
    stages = {name: json.loads((out / name / "training.json").read_text())
              for name in ("teacher", first, "student")}
    PreparedRecord(
        task=spec.name, preset=p.name, preset_config=p.to_dict(), seed=seed,
        glue_dir=None if glue_dir is None else str(Path(glue_dir).resolve()),
        base=stages["teacher"]["base"], timesteps=student.config.timesteps,
        layer_map=stages["student"]["layer_map"], dev_examples=len(dev["input_ids"]),
        teacher_metrics=teacher_metrics, student_metrics=student_metrics,
        timings={"teacher_train_s": stages["teacher"]["elapsed_s"],
                 "student_distill_s": stages[first]["elapsed_s"],
                 **({"elastic_train_s": stages["student"]["elapsed_s"]} if family.made_from else {}),
                 "teacher_eval_s": t1 - t0, "student_eval_s": t2 - t1, "importance_s": t3 - t2,
                 "this_run_s": time.perf_counter() - start},
        key=key, files=file_digests(out),
    ).write(out)
    print(f"{spec.name} dev {name}: teacher {teacher_metrics[name]:.4f}, "
          f"student (T={student.config.timesteps[0]}) {student_metrics[name]:.4f}")
    return out
