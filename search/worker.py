"""The Ray task: one evaluation of one compression config, returned as plain data.

The driver submits it with ``ray.remote(evaluate).options(num_cpus=..., num_gpus=...)`` and passes
the base bundle as an ObjectRef put in the object store once; Ray hands the task the bundle
itself. Errors inside the kernel come back as data (with the worker that hit them) so the driver
can record them on the trial; only a crashed worker surfaces as a Ray error.
"""
from __future__ import annotations

import os
import socket
import traceback
from typing import Any

import torch

from spikeprune.models.config import CompressionConfig


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def evaluate(base: Any, compression: dict[str, Any], *, max_examples: int | None, seed: int,
             energy: str, threads: int) -> dict[str, Any]:
    """Run the trial kernel; return ``TrialResult.to_dict()`` or ``{"error", "traceback", "worker"}``."""
    # A reused Ray worker keeps the thread count of its first task: set it for this task's CPUs.
    torch.set_num_threads(max(1, threads))
    from spikeprune.models.trial import run_trial

    try:
        result = run_trial(base, CompressionConfig.from_dict(compression), max_examples=max_examples,
                           seed=seed, energy=energy)
    except Exception as e:  # recorded on the trial as its error; the search goes on
        return {"error": f"{type(e).__name__}: {e}".splitlines()[0], "traceback": traceback.format_exc()[-4000:],
                "worker": worker_name()}
    return result.to_dict()
