"""Which readout carries the sentence? A linear probe on a copied, untrained spiking student.

Builds the spiking student straight from a prepared base's teacher (no distillation), runs it at T
timesteps, and fits a logistic regression on the last layer's rates read at [CLS] and averaged over
the real tokens, trained on SST-2 train sentences and scored on the dev set.

    python benchmarks/probe_readout.py --prepared runs/prepared/sst2-quick --timesteps 4
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from spikeprune.data import batches, encode, load_glue
from spikeprune.training import build_student


def features(student, tokenizer, split: str, n: int, seed: int, glue_dir: str) -> tuple[dict, np.ndarray]:
    encoded = encode(load_glue("sst2", split, glue_dir).subset(n, seed=seed), tokenizer, 64)
    cls, mean, labels = [], [], []
    with torch.inference_mode():
        for b in batches(encoded, 64):
            rates = student(b["input_ids"], b["attention_mask"], b["token_type_ids"]).hidden_rates[-1]
            mask = b["attention_mask"].float()[..., None]
            cls.append(rates[:, 0])
            mean.append((rates * mask).sum(1) / mask.sum(1))
            labels.append(b["labels"])
    return {"cls": torch.cat(cls).numpy(), "mean": torch.cat(mean).numpy()}, torch.cat(labels).numpy()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prepared", type=Path, required=True, help="prepared SST-2 base (its teacher/ is used)")
    p.add_argument("--glue-dir", default="../shared/glue")
    p.add_argument("--timesteps", type=int, default=4)
    p.add_argument("--train-examples", type=int, default=1500)
    args = p.parse_args(argv)
    teacher = AutoModelForSequenceClassification.from_pretrained(args.prepared / "teacher").eval()
    tokenizer = AutoTokenizer.from_pretrained(args.prepared / "teacher")
    student = build_student(teacher, args.timesteps).eval()
    x_train, y_train = features(student, tokenizer, "train", args.train_examples, 3, args.glue_dir)
    x_dev, y_dev = features(student, tokenizer, "validation", 10**9, 0, args.glue_dir)
    for readout in ("cls", "mean"):
        probe = LogisticRegression(max_iter=2000).fit(x_train[readout], y_train)
        print(f"T={args.timesteps} readout {readout}: probe dev accuracy {probe.score(x_dev[readout], y_dev):.4f}")


if __name__ == "__main__":
    main()
