"""The Ray task: one evaluation of one compression config, returned as plain data.

The driver submits it with ``ray.remote(evaluate).options(num_cpus=..., num_gpus=...)`` and passes
the base bundle as an ObjectRef put in the object store once; Ray hands the task the bundle
itself, so a worker node needs no access to the driver's disk. Errors inside the trial function come back
as data (with the worker that hit them) so the driver can record them on the trial; only a crashed
worker or a lost node surfaces as a Ray error. Every answer names the Ray node and the device that
ran it (``placement``), stored on the trial.

The trial function is named ``module:function`` (``SearchSettings.trial_function``,
``--trial-function``) and imported in
the worker, so a custom evaluation (another metric, a wrapper that logs) runs without changing the
driver: it takes the arguments of ``run_trial`` and returns a ``TrialResult``. When the space
stops trials early it is also given ``early_stop`` (``spikeprune.EarlyStop``; pass it on to
``run_trial``). The module must be importable on every Ray worker (installed, or on the
``PYTHONPATH`` the workers inherit).
"""
from __future__ import annotations

import importlib
import time
import traceback
from typing import Any, Callable

import torch

from spikeprune.models._config import CompressionConfig
from spikeprune.trial._run import EarlyStop, worker_name
from spikeprune.errors import SpikepruneError

from spikeprune.search._settings import DEFAULT_TRIAL_FUNCTION


def load_trial_function(spec: str) -> Callable[..., Any]:
    """The trial function ``module:function`` names (imported here)."""
    module, sep, name = str(spec).partition(":")
    if not sep or not module or not name.isidentifier():
        raise SpikepruneError(f"trial function {spec!r} is not of the form module:function, "
                              f"e.g. {DEFAULT_TRIAL_FUNCTION}")
    try:
        function = getattr(importlib.import_module(module), name)
    except ImportError as e:
        raise SpikepruneError(f"trial function module {module!r} cannot be imported ({e}); install it or put it on "
                              f"PYTHONPATH") from None
    except AttributeError:
        raise SpikepruneError(f"trial function module {module!r} has no {name!r}; check the function "
                              f"name") from None
    if not callable(function):
        raise SpikepruneError(f"trial function {spec!r} is not a function; name a function taking run_trial's "
                              f"arguments")
    return function


def task_device(node: str) -> str:
    """CUDA when Ray gave this task (on ``node``) a GPU (``--gpus-per-trial``), else the CPU.

    A GPU that torch cannot use is an error rather than a silent CPU run holding a GPU slot."""
    import ray

    gpus = ray.get_gpu_ids()
    if not gpus:
        return "cpu"
    if not torch.cuda.is_available():
        raise SpikepruneError(f"Ray gave this trial GPU {', '.join(map(str, gpus))} on node {node} but "
                              f"torch {torch.__version__} there cannot use CUDA; install a CUDA build of torch on "
                              f"the GPU nodes, or search with --gpus-per-trial 0 to run on CPUs")
    return "cuda"


def placement() -> dict[str, str]:
    """Where this task runs: the Ray node (its address and the start of its id; ``local`` outside
    Ray) and the process."""
    import ray

    node = "local"
    if ray.is_initialized():
        node = f"{ray.util.get_node_ip_address()}/{ray.get_runtime_context().get_node_id()[:8]}"
    return {"node": node, "worker": worker_name()}


def evaluate(base: Any, compression: dict[str, Any], *, trial_function: str = DEFAULT_TRIAL_FUNCTION,
             max_examples: int | None, seed: int, energy: str, threads: int, early_stop: EarlyStop | None = None,
             submitted_at: float | None = None) -> dict[str, Any]:
    """Run the trial function; return ``TrialResult.to_dict()`` or ``{"error", "traceback"}``, each with
    the ``node``, ``worker`` and ``device`` that ran it. With ``submitted_at`` (the driver's
    ``time.time()``), ``timing.dispatch_s`` is how long the task took to start: Ray scheduling,
    the base reaching the node and being unpickled (clocks of other machines may be a little off)."""
    started = time.time()
    # A reused Ray worker keeps the thread count of its first task: set it for this task's CPUs.
    torch.set_num_threads(max(1, threads))
    where: dict[str, str] = {**placement(), "device": "cpu"}
    try:
        run = load_trial_function(trial_function)
        where["device"] = device = task_device(where["node"])
        extra = {} if early_stop is None else {"early_stop": early_stop}
        result = run(base, CompressionConfig.from_dict(compression), max_examples=max_examples,
                     seed=seed, energy=energy, device=device, **extra)
        out = {**result.to_dict(), **where}
        if submitted_at is not None:
            out["timing"] = {**out["timing"], "dispatch_s": max(0.0, started - submitted_at)}
        return out
    except Exception as e:  # recorded on the trial as its error; the search goes on
        return {"error": f"{type(e).__name__}: {e}".splitlines()[0], "traceback": traceback.format_exc()[-4000:],
                **where}
