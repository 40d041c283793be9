"""GLUE data: the nine tasks, read from a local folder in the classic layout or from the HF hub.

The classic layout is what ``download_glue_data.py`` writes: ``<glue_dir>/<Folder>/<file>.tsv``
(e.g. ``SST-2/dev.tsv``). Each task has its own column set, so a ``TaskSpec`` per task names the
columns by header name (CoLA has no header; its fixed column names are given instead).

Splits use the Hugging Face names so both sources agree: ``train`` and ``validation`` (the
``dev.tsv`` file). MNLI has two dev sets and no ``validation``: ``validation_matched``
(``dev_matched.tsv``) and ``validation_mismatched`` (``dev_mismatched.tsv``). ``TaskSpec.dev_split``
names the split a search evaluates on (matched for MNLI). Test files carry no labels and are not
loaded.

Labels are class ids in the order of ``TaskSpec.labels`` (the same order as the HF ``glue``
dataset), or float scores for STS-B (``labels is None``, ``num_labels == 1``).

A split whose file the local folder lacks (QNLI's train set, QQP and MNLI are too large for some
copies) comes from the hub through ``datasets``; offline (``HF_HUB_OFFLINE=1``, nothing cached) it
is refused in one line naming the missing file and where it goes.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spikeprune.errors import SpikepruneError

HF_DATASET = "nyu-mll/glue"  # the canonical hub id of GLUE; the legacy id "glue" redirects here


@dataclass(frozen=True)
class TaskSpec:
    """Where a task's files are, how to read them and how it is scored."""

    name: str
    folder: str
    files: dict[str, str]
    text_columns: tuple[str, ...]
    label_column: str
    labels: tuple[str, ...] | None
    metrics: tuple[str, ...]
    main_metric: str
    hf_text_columns: tuple[str, ...]
    columns: tuple[str, ...] | None = None  # fixed column names for files without a header
    dev_split: str = "validation"

    @property
    def num_labels(self) -> int:
        """Classifier outputs: one per class, or one regression output for STS-B."""
        return 1 if self.labels is None else len(self.labels)

    @property
    def is_regression(self) -> bool:
        return self.labels is None


_DEV = {"train": "train.tsv", "validation": "dev.tsv"}
_BINARY = ("0", "1")
_ENTAIL2 = ("entailment", "not_entailment")

TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec("cola", "CoLA", _DEV, ("sentence",), "label", _BINARY, ("mcc",), "mcc",
                 ("sentence",), columns=("source", "label", "original_mark", "sentence")),
        TaskSpec("sst2", "SST-2", _DEV, ("sentence",), "label", _BINARY, ("accuracy",),
                 "accuracy", ("sentence",)),
        TaskSpec("mrpc", "MRPC", _DEV, ("#1 String", "#2 String"), "Quality", _BINARY,
                 ("f1", "accuracy"), "f1", ("sentence1", "sentence2")),
        TaskSpec("qqp", "QQP", _DEV, ("question1", "question2"), "is_duplicate", _BINARY,
                 ("f1", "accuracy"), "f1", ("question1", "question2")),
        # Main metric Pearson: the first of the official pair, as F1 is for MRPC/QQP.
        TaskSpec("stsb", "STS-B", _DEV, ("sentence1", "sentence2"), "score", None,
                 ("pearson", "spearman"), "pearson", ("sentence1", "sentence2")),
        TaskSpec("mnli", "MNLI",
                 {"train": "train.tsv", "validation_matched": "dev_matched.tsv",
                  "validation_mismatched": "dev_mismatched.tsv"},
                 ("sentence1", "sentence2"), "gold_label",
                 ("entailment", "neutral", "contradiction"), ("accuracy",), "accuracy",
                 ("premise", "hypothesis"), dev_split="validation_matched"),
        TaskSpec("qnli", "QNLI", _DEV, ("question", "sentence"), "label", _ENTAIL2,
                 ("accuracy",), "accuracy", ("question", "sentence")),
        TaskSpec("rte", "RTE", _DEV, ("sentence1", "sentence2"), "label", _ENTAIL2,
                 ("accuracy",), "accuracy", ("sentence1", "sentence2")),
        TaskSpec("wnli", "WNLI", _DEV, ("sentence1", "sentence2"), "label", _BINARY,
                 ("accuracy",), "accuracy", ("sentence1", "sentence2")),
    )
}


def get_task(name: str) -> TaskSpec:
    """Look a task up by name; folder spellings such as ``SST-2`` or ``STS-B`` work too."""
    spec = TASKS.get(name.lower().replace("-", "").replace("_", ""))
    if spec is None:
        raise SpikepruneError(f"unknown GLUE task {name!r}; use one of {', '.join(TASKS)}")
    return spec


@dataclass(frozen=True, repr=False)
class GlueSplit:
    """One split of one task: texts (second text None for single-sentence tasks) and labels."""

    task: str
    split: str
    texts_a: list[str]
    texts_b: list[str] | None
    labels: list[int] | list[float]

    def __len__(self) -> int:
        return len(self.labels)

    def __repr__(self) -> str:  # the default would print every sentence
        return f"GlueSplit(task={self.task!r}, split={self.split!r}, examples={len(self)})"

    def subset(self, n: int, seed: int = 0) -> GlueSplit:
        """A reproducible random ``n`` examples (file order kept), e.g. for low-fidelity trials.

        Returns the whole split when ``n >= len(self)``.
        """
        if n <= 0:
            raise SpikepruneError(f"subset size must be positive, got {n}")
        if n >= len(self):
            return self
        keep = np.sort(np.random.default_rng(seed).permutation(len(self))[:n]).tolist()
        return GlueSplit(
            self.task,
            self.split,
            [self.texts_a[i] for i in keep],
            None if self.texts_b is None else [self.texts_b[i] for i in keep],
            [self.labels[i] for i in keep],
        )


def load_glue(task: str, split: str, glue_dir: str | Path | None = None) -> GlueSplit:
    """Load a split from ``glue_dir`` (classic layout), or from the HF hub when it is None or
    lacks the split's file (a mistyped folder is an error, not a download)."""
    spec = get_task(task)
    if split not in spec.files:
        raise SpikepruneError(
            f"unknown split {split!r} for GLUE task {spec.name}; use one of {', '.join(spec.files)}"
        )
    if glue_dir is None:
        return _load_hub(spec, split)
    root = Path(glue_dir)
    if not root.is_dir():
        raise SpikepruneError(
            f"GLUE folder {root} does not exist; pass --glue-dir with the folder that holds "
            f"{spec.folder}/ (the download_glue_data.py layout)"
        )
    path = root / spec.folder / spec.files[split]
    if not path.is_file():
        return _load_hub(spec, split, missing=path)
    return _read_tsv(spec, split, path)


def _read_tsv(spec: TaskSpec, split: str, path: Path) -> GlueSplit:
    """Parse one classic GLUE file strictly: every row must have every column and a valid label."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")  # MRPC train/dev start with a byte-order mark
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise SpikepruneError(f"{path}:{line}: not valid UTF-8; re-download the file") from None
    # QUOTE_NONE: GLUE text holds unbalanced double quotes that are part of the sentence.
    reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t", quoting=csv.QUOTE_NONE)
    columns = spec.columns
    if columns is None:
        columns = tuple(next(reader, ()))
        for name in (*spec.text_columns, spec.label_column):
            if name not in columns:
                raise SpikepruneError(
                    f"{path}:1: header has no column {name!r} (found {', '.join(columns)}); "
                    f"is this the {spec.folder} {spec.files[split]} file?"
                )
    text_idx = [columns.index(name) for name in spec.text_columns]
    label_idx = columns.index(spec.label_column)
    label_ids = None if spec.labels is None else {v: i for i, v in enumerate(spec.labels)}

    texts: list[list[str]] = [[] for _ in text_idx]
    labels: list[Any] = []
    for row in reader:
        if not row:
            continue  # blank line, e.g. a trailing one
        where = f"{path}:{reader.line_num}"
        if len(row) != len(columns):
            raise SpikepruneError(
                f"{where}: expected {len(columns)} tab-separated columns, found {len(row)}; "
                "fix or delete this row"
            )
        for column, i in zip(texts, text_idx):
            column.append(row[i])
        value = row[label_idx]
        if label_ids is None:
            labels.append(_parse_score(value, where))
        elif value in label_ids:
            labels.append(label_ids[value])
        else:
            raise SpikepruneError(
                f"{where}: label {value!r} is not one of {', '.join(spec.labels or ())}; "
                "fix or delete this row"
            )
    if not labels:
        raise SpikepruneError(f"{path}: no data rows; re-download the file")
    return GlueSplit(spec.name, split, texts[0], texts[1] if len(texts) > 1 else None, labels)


def _parse_score(value: str, where: str) -> float:
    try:
        score = float(value)
    except ValueError:
        score = math.nan
    if not math.isfinite(score):
        raise SpikepruneError(
            f"{where}: score {value!r} is not a finite number; fix or delete this row"
        )
    return score


def _hub_offline() -> bool:
    """Whether Hugging Face hub access is switched off (``HF_HUB_OFFLINE``, as the hub client reads it)."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _load_hub(spec: TaskSpec, split: str, missing: Path | None = None) -> GlueSplit:
    """The HF ``glue`` dataset (the hub, or its local cache offline), mapped to our columns (its
    label ids match ours); ``missing`` is the local file it stands in for, named when it fails."""
    name = spec.files[split]
    try:
        from datasets import load_dataset

        data = load_dataset(HF_DATASET, spec.name, split=split)
    except Exception as exc:  # offline, hub down, no cache: all end the same way for the user
        why = ("the Hugging Face hub is offline (HF_HUB_OFFLINE=1) and has no cached copy" if _hub_offline()
               else f"the Hugging Face hub could not provide it ({(str(exc).splitlines() or [type(exc).__name__])[0]})")
        if missing is not None:
            raise SpikepruneError(
                f"GLUE {spec.name} {split}: {missing} not found and {why}; put {spec.folder}/{name} "
                f"there (the download_glue_data.py layout), or run where the hub is reachable"
            ) from None
        raise SpikepruneError(
            f"could not load GLUE {spec.name} {split}: {why}; pass --glue-dir with a folder holding "
            f"{spec.folder}/{name} (the download_glue_data.py layout)"
        ) from None
    texts = [list(data[name]) for name in spec.hf_text_columns]
    labels = [float(v) for v in data["label"]] if spec.is_regression else list(data["label"])
    return GlueSplit(spec.name, split, texts[0], texts[1] if len(texts) > 1 else None, labels)


def encode(split: GlueSplit, tokenizer: Any, max_length: int) -> dict[str, list]:
    """Tokenize once, unpadded (``batches`` pads each batch to its own longest example)."""
    enc = tokenizer(split.texts_a, split.texts_b, truncation=True, max_length=max_length)
    out = {
        "input_ids": list(enc["input_ids"]),
        "attention_mask": list(enc["attention_mask"]),
        "labels": list(split.labels),
    }
    if "token_type_ids" in enc:
        out["token_type_ids"] = list(enc["token_type_ids"])
    return out


def batches(
    encoded: dict[str, list],
    batch_size: int,
    shuffle: bool = False,
    seed: int = 0,
    sort_by_length: bool = False,
    pad_id: int = 0,
    bucket: int = 0,
) -> Iterator[dict[str, torch.Tensor]]:
    """Yield padded tensor batches: input_ids, attention_mask, token_type_ids, labels.

    ``sort_by_length`` groups similar lengths to cut padding (fast evaluation); with ``shuffle``
    too, the batches come in a seeded random order. ``bucket`` (with ``shuffle``: training) sorts
    by length only within consecutive groups of ``bucket`` batches of the shuffled order, then
    shuffles the batches: most of the padding saved, the data order still random. ``pad_id`` is
    the tokenizer's pad token id.
    """
    if batch_size <= 0:
        raise SpikepruneError(f"batch size must be positive, got {batch_size}")
    ids = encoded["input_ids"]
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(ids)).tolist() if shuffle else list(range(len(ids)))
    if sort_by_length:
        order.sort(key=lambda i: len(ids[i]))
    elif bucket > 0:
        group = bucket * batch_size
        order = [i for s in range(0, len(order), group) for i in sorted(order[s:s + group], key=lambda i: len(ids[i]))]
    chunks = [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
    if shuffle and (sort_by_length or bucket > 0):
        chunks = [chunks[i] for i in rng.permutation(len(chunks))]
    types = encoded.get("token_type_ids")
    for chunk in chunks:
        width = max(len(ids[i]) for i in chunk)
        yield {
            "input_ids": _pad([ids[i] for i in chunk], width, pad_id),
            "attention_mask": _pad([encoded["attention_mask"][i] for i in chunk], width, 0),
            "token_type_ids": _pad(
                [types[i] if types is not None else [0] * len(ids[i]) for i in chunk], width, 0
            ),
            "labels": torch.tensor([encoded["labels"][i] for i in chunk]),
        }


def _pad(rows: list[list[int]], width: int, value: int) -> torch.Tensor:
    return torch.tensor([row + [value] * (width - len(row)) for row in rows], dtype=torch.long)
