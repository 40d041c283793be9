"""Training: weight mapping, teacher scores, surrogate gradients, determinism and exact resume."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before anything imports huggingface_hub: fail fast offline

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

from spikeprune.errors import SpikepruneError
from spikeprune.models._model import SpikingBertForSequenceClassification
from spikeprune.models._evaluation import evaluate_model
from spikeprune.data._glue import batches, encode
from spikeprune.training import _loop as loop
from spikeprune.training import _prepare as prepare_module
from spikeprune.training._convert import build_student, default_layer_map
from spikeprune.training._distill import DistillLoss, distill_student, teacher_forward
from spikeprune.training._presets import PRESETS
from spikeprune.training._teacher import _load_base, default_base, train_teacher

# 24 examples in batches of 4: six steps, checkpoints after steps 2 and 4.
SMALL = dataclasses.replace(PRESETS["tiny"], teacher_examples=24, distill_examples=24, batch_size=4,
                            eval_examples=16, checkpoint_every=2)


@pytest.fixture(scope="session")
def glue_dir() -> Path:
    default = Path(__file__).resolve().parents[2] / "shared" / "glue"
    path = Path(os.environ.get("SPIKEPRUNE_GLUE_DIR", default))
    if not (path / "SST-2" / "train.tsv").is_file():
        pytest.skip(f"SST-2 not in {path}")
    return path


@pytest.fixture(scope="session")
def tokenizer():
    return AutoTokenizer.from_pretrained(default_base())


def tiny_teacher(layers: int = 3, num_labels: int = 2) -> BertForSequenceClassification:
    """A random BERT with weights large enough that every spiking population is active."""
    torch.manual_seed(0)
    config = BertConfig(vocab_size=100, hidden_size=16, num_hidden_layers=layers, num_attention_heads=2,
                        intermediate_size=24, max_position_embeddings=32, num_labels=num_labels,
                        initializer_range=0.3, attn_implementation="eager")
    return BertForSequenceClassification(config).eval()


def tiny_batch(num_labels: int = 2) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 100, (3, 7), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    mask[2, 3:] = 0
    labels = torch.tensor([0.5, 2.0, 4.5]) if num_labels == 1 else torch.tensor([0, 1, 1])
    return {"input_ids": ids * mask, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids),
            "labels": labels}


def test_default_layer_map_spreads_evenly_and_ends_at_the_last_layer():
    assert default_layer_map(6, 3) == [1, 3, 5]
    assert default_layer_map(6, 6) == [0, 1, 2, 3, 4, 5]
    assert default_layer_map(6, 1) == [5]
    assert default_layer_map(4, 2) == [1, 3]
    with pytest.raises(SpikepruneError):
        default_layer_map(2, 3)


def test_build_student_copies_the_mapped_teacher_weights():
    teacher = tiny_teacher(layers=3)
    student = build_student(teacher, timesteps=3, num_layers=2, threshold=0.5)   # default map [0, 2]
    t = teacher.bert
    pairs = [
        (student.embeddings.word_embeddings.weight, t.embeddings.word_embeddings.weight),
        (student.embeddings.LayerNorm.bias, t.embeddings.LayerNorm.bias),
        (student.layers[0].query.weight, t.encoder.layer[0].attention.self.query.weight),
        (student.layers[1].key.bias, t.encoder.layer[2].attention.self.key.bias),
        (student.layers[1].value.weight, t.encoder.layer[2].attention.self.value.weight),
        (student.layers[1].attn_out.weight, t.encoder.layer[2].attention.output.dense.weight),
        (student.layers[1].attn_norm.weight, t.encoder.layer[2].attention.output.LayerNorm.weight),
        (student.layers[1].intermediate.weight, t.encoder.layer[2].intermediate.dense.weight),
        (student.layers[1].output.bias, t.encoder.layer[2].output.dense.bias),
        (student.layers[1].out_norm.weight, t.encoder.layer[2].output.LayerNorm.weight),
        (student.pooler.weight, t.pooler.dense.weight),
        (student.classifier.bias, teacher.classifier.bias),
    ]
    for ours, theirs in pairs:
        assert torch.equal(ours, theirs)
    assert student.config.num_layers == 2 and student.config.timesteps == [3, 3]
    assert student.config.heads == [2, 2] and student.config.head_dim == 8 and student.config.threshold == 0.5
    # An explicit map, and the copy is a copy: training the student leaves the teacher alone.
    student = build_student(teacher, timesteps=2, layer_map=[1])
    assert torch.equal(student.layers[0].output.weight, t.encoder.layer[1].output.dense.weight)
    with torch.no_grad():
        student.layers[0].output.weight.add_(1.0)
    assert not torch.equal(student.layers[0].output.weight, t.encoder.layer[1].output.dense.weight)


def test_minilm_base_loads_every_encoder_weight(tokenizer):
    from safetensors import safe_open

    model = _load_base(default_base(), 2, None, tokenizer)
    with safe_open(str(Path(default_base()) / "model.safetensors"), "pt") as f:
        assert torch.equal(f.get_tensor("encoder.layer.5.output.dense.weight"),
                           model.bert.encoder.layer[5].output.dense.weight)
        assert torch.equal(f.get_tensor("pooler.dense.bias"), model.bert.pooler.dense.bias)


def test_a_converted_student_with_every_population_in_float_is_its_teacher():
    """The converted family is its teacher plus quantization: with nothing quantized (the probe
    of benchmarks/bench_fidelity.py --quantization-loss) the surrogate gives the teacher's logits."""
    from spikeprune.models import FAMILIES

    teacher, batch = tiny_teacher(), tiny_batch()
    student = build_student(teacher, timesteps=4, family="converted", residual_thresholds="unit").eval()
    inputs = (batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    with torch.no_grad():
        theirs = teacher(*inputs).logits
        quantized = student(*inputs, mode="surrogate").logits
        student.float_populations = frozenset({"encoder", *FAMILIES["converted"].populations})
        ours = student(*inputs, mode="surrogate").logits
    assert torch.allclose(ours, theirs, atol=1e-5)
    assert not torch.allclose(quantized, theirs, atol=1e-3)  # θ = 1 before calibration: coarse


def test_teacher_scores_are_the_pre_softmax_scores_hf_uses():
    teacher = tiny_teacher()
    batch = tiny_batch()
    out = teacher_forward(teacher, batch, [0, 2])
    with torch.no_grad():
        probs = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                        output_attentions=True).attentions
    key_mask = (1.0 - batch["attention_mask"].float())[:, None, None, :] * -1e9
    for layer in (0, 2):
        ours = torch.softmax(out.scores[layer] + key_mask, dim=-1)
        assert torch.allclose(ours, probs[layer], atol=1e-6)


@pytest.mark.parametrize("num_labels", [2, 1])
def test_surrogate_gradients_reach_every_student_weight(num_labels):
    teacher = tiny_teacher(num_labels=num_labels)
    student = build_student(teacher, timesteps=4)
    batch = tiny_batch(num_labels)
    loss_fn = DistillLoss(student.config, 16, 2, [0, 1, 2], hidden_weight=1.0, attention_weight=1.0,
                          logit_weight=1.0, label_weight=1.0, temperature=2.0)
    target = teacher_forward(teacher, batch, [0, 1, 2])
    out = student(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], mode="surrogate")
    loss, parts = loss_fn(out, target, batch, student.loss)
    assert set(parts) == {"hid", "att", "log", "lab"} and all(v > 0 for v in parts.values())
    loss.backward()
    for name, param in [*student.named_parameters(), *loss_fn.named_parameters()]:
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_pruned_heads_need_a_head_map():
    teacher = tiny_teacher()
    student = build_student(teacher, timesteps=2)
    pruned = dataclasses.replace(student.config, heads=[1, 2, 2])
    with pytest.raises(SpikepruneError, match="teacher_heads"):
        DistillLoss(pruned, 16, 2, [0, 1, 2], hidden_weight=1.0, attention_weight=1.0,
                    logit_weight=1.0, label_weight=0.0, temperature=1.0)


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class Crash(RuntimeError):
    pass


def _crash_on_call(monkeypatch, cls, call: int) -> None:
    """Make ``cls.forward`` raise on its ``call``-th use: a run killed between checkpoints."""
    original = cls.forward
    calls = {"n": 0}

    def forward(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == call:
            raise Crash
        return original(self, *args, **kwargs)

    monkeypatch.setattr(cls, "forward", forward)


def test_training_is_seeded_and_resumes_bit_identically(tmp_path, glue_dir, tokenizer, monkeypatch):
    # Teacher (dropout on, so the RNG state must survive the checkpoint): uninterrupted twice...
    first = _weights(train_teacher("sst2", None, glue_dir, tmp_path / "a", SMALL, seed=3))
    second = _weights(train_teacher("sst2", None, glue_dir, tmp_path / "b", SMALL, seed=3))
    assert _same(first, second)
    other = _weights(train_teacher("sst2", None, glue_dir, tmp_path / "other", SMALL, seed=4))
    assert not _same(first, other)
    # ...and killed in step 5 (after the step-4 checkpoint), then re-run.
    with monkeypatch.context() as m:
        _crash_on_call(m, BertForSequenceClassification, 5)
        with pytest.raises(Crash):
            train_teacher("sst2", None, glue_dir, tmp_path / "c", SMALL, seed=3)
    assert [p.name for p in (tmp_path / "c" / "checkpoints" / "teacher").iterdir()] == ["step-00000004"]
    resumed = _weights(train_teacher("sst2", None, glue_dir, tmp_path / "c", SMALL, seed=3))
    assert _same(first, resumed)
    assert not (tmp_path / "c" / "checkpoints").exists()

    # Student distillation from that teacher, the same three ways.
    from transformers import AutoModelForSequenceClassification

    teacher = AutoModelForSequenceClassification.from_pretrained(tmp_path / "a" / "teacher")

    def distill(folder: str, seed: int = 3) -> dict[str, torch.Tensor]:
        student = build_student(teacher, SMALL.timesteps)
        distill_student(student, teacher, "sst2", glue_dir, tmp_path / folder, SMALL, tokenizer=tokenizer, seed=seed)
        return _weights(tmp_path / folder / "student")

    first = distill("a")
    assert not _same(first, {k: v for k, v in build_student(teacher, 2).state_dict().items()})
    assert _same(first, distill("b"))
    with monkeypatch.context() as m:
        _crash_on_call(m, SpikingBertForSequenceClassification, 6)
        with pytest.raises(Crash):
            distill("c")
    assert (tmp_path / "c" / "checkpoints" / "student" / "step-00000004").is_dir()
    assert _same(first, distill("c"))
    # A checkpoint made with other settings is refused, not silently mixed in.
    with monkeypatch.context() as m:
        _crash_on_call(m, SpikingBertForSequenceClassification, 4)
        with pytest.raises(Crash):
            distill("d")
    with pytest.raises(SpikepruneError, match="other settings"):
        distill("d", seed=5)


def test_prepare_writes_the_prepared_folder_and_reuses_finished_stages(tmp_path, glue_dir, capsys):
    out = prepare_module.prepare("sst2", glue_dir, tmp_path, SMALL, seed=0)
    assert out == tmp_path / "prepared" / "sst2-tiny"
    for name in ("config.json", "model.safetensors", "tokenizer.json", "training.json"):
        assert (out / "teacher" / name).is_file() and (out / "student" / name).is_file()
    report = json.loads((out / "prepare.json").read_text())
    assert report["task"] == "sst2" and report["timesteps"] == [2, 2] and report["dev_examples"] == 16
    for key in ("teacher_metrics", "student_metrics"):
        assert set(report[key]) == {"accuracy", "metric"} and 0 <= report[key]["metric"] <= 1
    assert "teacher 0." in capsys.readouterr().out
    before = (out / "student" / "model.safetensors").stat().st_mtime_ns
    prepare_module.prepare("sst2", glue_dir, tmp_path, SMALL, seed=0)
    assert (out / "student" / "model.safetensors").stat().st_mtime_ns == before

    # evaluate_model: the spiking model also returns its spike counts over every dev example.
    student = SpikingBertForSequenceClassification.from_pretrained(out / "student")
    tok = AutoTokenizer.from_pretrained(out / "student")
    dev = loop.load_split("sst2", "validation", glue_dir, tok, 32, 10, 0)
    evaluation = evaluate_model(student, batches(dev, 4), "sst2")
    metrics, record = evaluation.metrics, evaluation.record
    assert record.examples == 10 and record.tokens == sum(map(len, dev["input_ids"]))
    assert metrics["metric"] == metrics["accuracy"]


def test_threads_follow_the_environment(monkeypatch):
    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("SPIKEPRUNE_THREADS", "1")
        assert loop.configure_threads() == 1 and torch.get_num_threads() == 1
        monkeypatch.setenv("SPIKEPRUNE_THREADS", "many")
        with pytest.raises(SpikepruneError):
            loop.configure_threads()
    finally:
        torch.set_num_threads(before)


def test_prepare_set_overrides_reach_the_preset_and_guard_the_cache(tiny_prepared, glue_dir):
    from spikeprune.errors import SpikepruneError
    from spikeprune.training._prepare import prepare
    from spikeprune.training._presets import Preset, override_preset

    p = override_preset("quick", ["distill_examples=3668", "distill_lr=1e-4", "eval_examples=null", "family=spikingbert"])
    assert (p.name, p.distill_examples, p.distill_lr, p.eval_examples, p.family) == ("quick", 3668, 1e-4, None, "spikingbert")
    assert override_preset("quick", []) == override_preset("quick", ()) and p.batch_size == 32
    run_root = tiny_prepared.parent.parent
    assert prepare("sst2", glue_dir, run_root, preset="tiny") == tiny_prepared  # cached, same settings
    with pytest.raises(SpikepruneError, match="distill_examples differ"):
        prepare("sst2", glue_dir, run_root, preset=override_preset("tiny", ["distill_examples=7"]))
    old = {**PRESETS["quick"].to_dict(), "threshold": 1.0, "leak": 1.0, "labels_only": False}  # a base made before
    assert Preset.from_dict(old) == PRESETS["quick"]


def test_named_presets_take_their_task_values_before_any_set():
    from spikeprune.training._presets import PRESETS, TASK_VALUES, get_preset, override_preset

    assert get_preset("quick", "MRPC").max_length == TASK_VALUES["quick"]["mrpc"]["max_length"] == 128
    assert get_preset("quick", "sst2") == dataclasses.replace(PRESETS["quick"], label_weight=0.5, elastic_examples=18000,
                                                              elastic_lr=1e-4, elastic_small_weight=0.5) != PRESETS["quick"]
    assert get_preset("quick") == PRESETS["quick"]                    # no task: the preset as it is
    assert get_preset("quick", "qnli") == PRESETS["quick"]           # a task without values takes the preset's
    cola = get_preset("quick", "CoLA")                               # single sentences: the preset's length
    assert (cola.max_length, cola.teacher_epochs, cola.batch_size, cola.label_weight) == (64, 4, 16, 0.5)
    assert get_preset("quick", "wnli").distill_lr == get_preset("quick", "rte").distill_lr == 2e-5
    assert override_preset("quick", ["max_length=96"], "mrpc").max_length == 96
    assert override_preset("quick", [], "mrpc").teacher_epochs == 3
    assert get_preset("tiny", "mrpc") == PRESETS["tiny"]


def test_the_full_preset_makes_the_quick_presets_student_with_more_training():
    """Going from quick to full changes budgets, not the kind of student."""
    quick, full = PRESETS["quick"], PRESETS["full"]
    student = ("family", "timesteps", "student_layers", "levels", "calibration_percentile", "residual_thresholds")
    assert [getattr(full, f) for f in student] == [getattr(quick, f) for f in student]
    assert full.distill_examples is None and full.distill_epochs > quick.distill_epochs


@pytest.mark.integration
def test_a_recovery_source_reaches_a_fresh_ray_worker_whole(tiny_prepared, glue_dir, ray_local):
    """Ray ships the recovery source inside the base bundle. Unpickled in a process that never
    built a Hugging Face model, a teacher shipped whole returns no hidden states; the rebuilt one
    must give the same logits, hidden states and scores as here."""
    import uuid

    import ray

    from spikeprune.training._recovery import RecoverySource

    source = RecoverySource.load(tiny_prepared, glue_dir)

    @ray.remote(num_cpus=1)
    def forward(shipped: RecoverySource, batch: dict, layers: list[int]) -> tuple:
        return len(shipped.train), teacher_forward(shipped.teacher, batch, layers)

    batch = next(batches(encode(source.train.subset(4), source.tokenizer, 32), 4, pad_id=0))
    layers = list(range(source.teacher.config.num_hidden_layers))
    # A runtime environment of its own makes Ray start a new worker process for the task.
    fresh = {"env_vars": {"SPIKEPRUNE_TEST_FRESH_WORKER": uuid.uuid4().hex}}
    examples, after = ray.get(forward.options(runtime_env=fresh).remote(source, batch, layers))
    before = teacher_forward(source.teacher, batch, layers)
    assert examples == len(source.train)
    assert torch.equal(before.logits, after.logits)
    assert len(after.hidden) == len(layers) + 1
    assert all(torch.equal(a, b) for a, b in zip(before.hidden, after.hidden))
    assert all(torch.equal(before.scores[l], after.scores[l]) for l in layers)


@pytest.mark.parametrize("bits", [None, [2.0, 4.0], [1.0, 1.58]])
def test_recovery_trains_the_model_at_the_widths_it_will_be_quantized_to(tiny_prepared, glue_dir, monkeypatch, bits):
    """Every recovery step runs the student on the weights ``quantize_model`` will give it (float
    when no widths are given), and the gradient reaches the float weights through them."""
    from spikeprune.models._compress import quantize_model
    from spikeprune.training._recovery import RecoverySource, recover

    source = RecoverySource.load(tiny_prepared, glue_dir)
    student = SpikingBertForSequenceClassification.from_pretrained(tiny_prepared / "student")
    before = student.layers[1].intermediate.weight.detach().clone()
    expected = quantize_model(student, bits).layers[1].intermediate.weight.detach() if bits else before
    seen = []
    original = SpikingBertForSequenceClassification.forward

    def spy(self, *args, **kwargs):
        seen.append(self.layers[1].intermediate.weight.detach().clone())
        return original(self, *args, **kwargs)

    monkeypatch.setattr(SpikingBertForSequenceClassification, "forward", spy)
    recover(student, source, steps=2, weight_bits=bits)
    assert len(seen) == 2 and torch.equal(seen[0], expected)
    assert not torch.equal(student.layers[1].intermediate.weight, before)   # the float weights were trained
    if bits:   # the second step sees the trained weights quantized (on the first step's scales at 2-8 bits)
        assert not torch.equal(seen[1], seen[0])
