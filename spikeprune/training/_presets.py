"""Training budgets: the presets of ``spikeprune prepare`` and ``--set`` overrides.

Plain data, no torch: the command line lists the presets without loading the model code.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import yaml

from spikeprune.errors import SpikepruneError

#: Head/neuron importance (scored once per base) and the readout standardisation are computed
#: on this many training batches.
IMPORTANCE_BATCHES = 8
#: The time-elastic student's θ table (16 rows, each a layer-by-layer fit) is fitted on the first
#: this many of them: a quarter of the batches, a quarter of the time, and training refines it.
THETA_TABLE_BATCHES = 2
#: What the elastic training's smaller configs learn from (``Preset.elastic_targets``).
ELASTIC_TARGETS: tuple[str, ...] = ("teacher", "largest", "mixed")

@dataclass(frozen=True)
class Preset:
    """Everything ``prepare`` needs to know about budgets; ``None`` example counts mean "all"."""

    name: str
    # teacher fine-tuning
    teacher_examples: int | None
    teacher_epochs: int
    teacher_lr: float
    #: build a fresh random BERT with these BertConfig sizes instead of loading ``base``'s
    #: weights (``base`` still gives the tokenizer); for tests
    teacher_arch: dict[str, int] | None
    batch_size: int
    max_length: int
    warmup_ratio: float
    weight_decay: float
    # student
    #: the student's family (config.FAMILIES); every preset names it
    family: str
    timesteps: int
    student_layers: int | None
    # distillation
    distill_examples: int | None
    distill_epochs: int
    distill_lr: float
    hidden_weight: float
    attention_weight: float
    logit_weight: float
    label_weight: float
    temperature: float
    # evaluation and checkpoints
    eval_examples: int | None
    eval_batch_size: int
    checkpoint_every: int
    #: training batches are sorted by length within groups of this many batches (0: plain shuffle)
    length_bucket: int = 0
    #: for the "converted" family: its levels per sign and the percentile of |activation| on
    #: calibration batches that sets each population's L·θ
    levels: int = 8
    calibration_percentile: float = 99.9
    #: "unit": the converted family's residual-stream populations get per-unit θ (models/_config.py);
    #: a SpikingBERT-family student ignores it
    residual_thresholds: str = "population"
    #: for the "elastic" family: the sandwich-rule training that makes every config of the
    #: search space good (training/_elastic.py): its sentences (0: none, the θ table alone) and
    #: passes over them, rate, random configs per batch besides the largest and smallest, and the
    #: smallest's share of each layer's heads and FFN neurons
    elastic_examples: int | None = 0
    elastic_epochs: int = 1
    elastic_lr: float = 5e-5
    elastic_sampled: int = 2
    elastic_min_width: float = 0.25
    #: what the configs other than the largest learn from: "teacher" (the ANN, as the largest
    #: does), "largest" (in-place distillation: the largest config's outputs of the same batch) or
    #: "mixed" (the largest's for configs that keep every unit, the teacher's for those that cut units)
    elastic_targets: str = "teacher"
    #: run the elastic training's forward passes (student and teacher) in bfloat16 autocast
    elastic_bf16: bool = False
    #: keep an exponential moving average of the student's weights with this decay per step and
    #: publish it instead of the last weights (0: off)
    elastic_average: float = 0.0
    #: the weight of the smallest config's loss in each batch's sum (its loss is about three times
    #: the others', so at 1 it pulls the shared weights hardest)
    elastic_small_weight: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preset:
        """The preset ``to_dict`` wrote. Fields older bases recorded and this version dropped
        (``threshold``, ``leak``, ``labels_only``: no preset changed them) are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


PRESETS: dict[str, Preset] = {p.name: p for p in (
    # Seconds, for tests: a 2-layer random BERT of width 32 on a few dozen examples, and a converted
    # student (the one the quick preset's elastic student is made from) with 4 levels per sign;
    # --set family=elastic --set elastic_examples=24 makes the elastic one (tests/test_elastic_training.py).
    Preset("tiny", teacher_examples=48, teacher_epochs=1, teacher_lr=1e-3,
           teacher_arch=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                             intermediate_size=64),
           batch_size=8, max_length=32, warmup_ratio=0.1, weight_decay=0.01,
           family="converted", timesteps=2, student_layers=None,
           distill_examples=48, distill_epochs=1, distill_lr=1e-3,
           hidden_weight=1.0, attention_weight=1.0, logit_weight=1.0, label_weight=0.0,
           temperature=1.0,
           eval_examples=32, eval_batch_size=16, checkpoint_every=2,
           levels=4, residual_thresholds="unit"),
    # Minutes on a 2-core CPU. Teacher: 16,000 sentences at lr 1e-4 in length-bucketed batches.
    # Student: the time-elastic family, made from a converted one (8 levels per sign, T = 16,
    # per-unit θ on the residual stream; calibrated, then trained as the quantized network on
    # 16,000 sentences, kept as converted/), whose θ table is then fitted for every T and which is
    # trained for every config of the shipped spaces on 12,000 sentences (sandwich rule; SST-2 takes
    # 18,000 at lr 1e-4, TASK_VALUES).
    # The converted student alone: --set family=converted. A SpikingBERT-family student:
    # --set family=spikingbert --set timesteps=4 --set distill_examples=8000 --set distill_lr=5e-4.
    Preset("quick", teacher_examples=16000, teacher_epochs=1, teacher_lr=1e-4, teacher_arch=None,
           batch_size=32, max_length=64, warmup_ratio=0.1, weight_decay=0.01,
           family="elastic", timesteps=16, student_layers=None,
           distill_examples=16000, distill_epochs=1, distill_lr=5e-5,
           hidden_weight=1.0, attention_weight=0.1, logit_weight=1.0, label_weight=0.0,
           temperature=1.0,
           eval_examples=None, eval_batch_size=64, checkpoint_every=25, length_bucket=50,
           levels=8, calibration_percentile=99.9, residual_thresholds="unit", elastic_examples=12000),
    # For a GPU (--device cuda): the quick preset's student (the time-elastic family) on the whole
    # train set, several epochs.
    Preset("full", teacher_examples=None, teacher_epochs=3, teacher_lr=5e-5, teacher_arch=None,
           batch_size=32, max_length=128, warmup_ratio=0.1, weight_decay=0.01,
           family="elastic", timesteps=16, student_layers=None,
           distill_examples=None, distill_epochs=3, distill_lr=5e-5,
           hidden_weight=1.0, attention_weight=0.1, logit_weight=1.0, label_weight=0.0,
           temperature=1.0,
           eval_examples=None, eval_batch_size=128, checkpoint_every=500, length_bucket=50,
           levels=8, calibration_percentile=99.9, residual_thresholds="unit", elastic_examples=None),
)}


#: Values a named preset takes for a task in place of its own (applied before any --set): sentence
#: pairs are longer than single sentences and their training sets small, so they get a longer
#: maximum length and several epochs, in batches of 16. RTE's teacher needs a low rate (at lr 1e-4
#: and batch 32 it stayed near the majority class) and so does its QAT (on 2,490 pairs, 3 epochs at
#: the default distill_lr drift further from the teacher); STS-B takes MRPC's batch and rate.
#: docs/RESULTS.md has the scores.
#:
#: CoLA (8,551 short sentences, 70 % acceptable, scored by Matthews correlation) is a single-sentence
#: task like SST-2, so it keeps length 64, but one epoch of the whole set is about half the steps
#: SST-2's teacher takes, and grammaticality is what a sentence-similarity checkpoint like
#: all-MiniLM-L6-v2 was least trained on. Its teacher takes 4 epochs in batches of 16 at lr 1e-4
#: (dev MCC 0.287, and 0.311 with the same seed on another machine of this type; MRPC's 3 epochs
#: at 5e-5 reached 0.281, 6 and 8 epochs 0.276 and 0.291), its QAT 2 epochs over the whole set
#: with gold labels mixed in as SST-2's are, because a teacher that misjudges many sentences should
#: not be taught as right. WNLI (635 pairs) takes RTE's small-NLI
#: recipe; its dev set reuses training sentences with the other answer, so what a model learns from
#: the training pairs answers the dev pairs wrongly: measured, teacher and student both score far
#: below the majority class (56.3 %), and compressing the student moves it towards chance
#: (benchmarks/glue_table.py --tasks wnli). SST-2's elastic training takes 18,000 sentences at
#: lr 1e-4, which measured better on its few-step configs than the preset's 12,000 at 5e-5; every
#: other task here has fewer training examples than either, so it trains on all of them at 5e-5.
#: SST-2's smallest config (T = 1, 2-bit weights, a quarter of the units) weighs half in each
#: batch's loss: at full weight its loss, about three times the others', pulled the shared weights
#: towards a config no gate asks for (three seeds: docs/RESULTS.md, "Elastic-training recipes").
TASK_VALUES: dict[str, dict[str, dict[str, Any]]] = {
    "quick": {
        # Gold labels mixed into the QAT loss, so a teacher's wrong answer is not taught as right
        # (docs/RESULTS.md, "Gold labels in the QAT loss"); the pair tasks were measured without.
        "sst2": {"label_weight": 0.5, "elastic_examples": 18000, "elastic_lr": 1e-4, "elastic_small_weight": 0.5},
        "cola": {"teacher_epochs": 4, "teacher_lr": 1e-4, "batch_size": 16, "distill_epochs": 2, "label_weight": 0.5},
        "mrpc": {"max_length": 128, "teacher_epochs": 3, "teacher_lr": 5e-5, "batch_size": 16, "distill_epochs": 3},
        "rte": {"max_length": 128, "teacher_epochs": 6, "teacher_lr": 3e-5, "batch_size": 16, "distill_epochs": 3,
                "distill_lr": 2e-5},
        "stsb": {"max_length": 128, "teacher_epochs": 3, "teacher_lr": 5e-5, "batch_size": 16, "distill_epochs": 3},
        "wnli": {"max_length": 128, "teacher_epochs": 6, "teacher_lr": 3e-5, "batch_size": 16, "distill_epochs": 3,
                 "distill_lr": 2e-5},
    },
}


def override_preset(preset: str | Preset, overrides: Iterable[str], task: str | None = None) -> Preset:
    """The preset (with its values for ``task``) and ``FIELD=VALUE`` overrides applied (the value
    parsed as YAML: 4000, 1e-4, true, null), for ``spikeprune prepare --set``; the name stays so
    the base keeps its folder."""
    p = get_preset(preset, task)
    kinds = {"int": int, "float": (int, float), "bool": bool, "int | None": (int, type(None)), "str": str}
    fields = {f.name: kinds[str(f.type)] for f in dataclasses.fields(Preset) if str(f.type) in kinds}
    changes: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = str(item).partition("=")
        key = key.strip()
        if not sep or key not in fields:
            raise SpikepruneError(f"--set {item!r} is not FIELD=VALUE with a preset field; fields: {', '.join(sorted(fields))}")
        value = yaml.safe_load(raw)
        if fields[key] == (int, float) and isinstance(value, str):  # YAML reads 1e-4 as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if not isinstance(value, fields[key]) or (isinstance(value, bool) and fields[key] is not bool):
            raise SpikepruneError(f"--set {key}={raw}: expected a value like {getattr(p, key)!r}")
        changes[key] = float(value) if fields[key] == (int, float) else value
    return dataclasses.replace(p, **changes)


def get_preset(preset: str | Preset, task: str | None = None) -> Preset:
    """A preset by name, with its ``TASK_VALUES`` for ``task``; a Preset object is used as it is."""
    if isinstance(preset, Preset):
        return preset
    if preset not in PRESETS:
        raise SpikepruneError(f"unknown preset {preset!r}; use one of {', '.join(PRESETS)}")
    if task is None:
        return PRESETS[preset]
    from spikeprune.data._glue import get_task  # the task's canonical name; torch only when needed

    return dataclasses.replace(PRESETS[preset], **TASK_VALUES.get(preset, {}).get(get_task(task).name, {}))
