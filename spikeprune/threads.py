"""OpenMP's wait policy, chosen where work starts (the command's ``main``, a search's Ray tasks,
the benchmarks) and never on import.

Idle OpenMP threads (torch's and numba's parallel IF kernel) spin by default. On cores shared with
other work (Ray workers, a second job) the spinning threads hold the cores that work needs, so the
command makes them sleep (``PASSIVE``). A search trial that Ray gave several CPUs of its own gains
from spinning threads instead (``ACTIVE``). The variable must be set before torch loads its OpenMP
runtime, and a policy the user set is always kept (docs/DESIGN.md §8).
"""
from __future__ import annotations

import os

VARIABLE = "OMP_WAIT_POLICY"

#: Whether this process's policy was set by ``default_wait_policy`` rather than by the user.
_defaulted = False


def default_wait_policy() -> None:
    """Make idle OpenMP threads of this process (and the processes it starts) sleep, unless the
    user chose a policy. Call before anything imports torch or numba."""
    global _defaulted
    if VARIABLE not in os.environ:
        os.environ[VARIABLE] = "PASSIVE"
        _defaulted = True


def user_wait_policy() -> str | None:
    """The policy the user set in the environment; None when unset or set by ``default_wait_policy``."""
    return None if _defaulted else os.environ.get(VARIABLE)


def trial_wait_policy(cpus: float) -> dict[str, str]:
    """Environment of the Ray workers that run trials of ``cpus`` CPUs: a trial of 2+ CPUs owns them
    (Ray counts them), so its threads spin; a one-thread trial shares its core and sleeps. Empty
    when the user set a policy, which the workers then inherit."""
    if user_wait_policy() is not None:
        return {}
    return {VARIABLE: "ACTIVE" if int(cpus) >= 2 else "PASSIVE"}
