"""A trial function that misbehaves on request, for the reliability tests.

The tests run searches with ``SearchSettings(trial_function="tests.faulty_kernels:faulty")`` (the
documented ``--trial-function`` extension point; the command's old name ``--kernel`` is tested too),
so nothing test-only lives in the shipped code. The function runs in
Ray worker processes, so the test plans the faults through files: ``plant`` puts one token per
fault in ``<prepared>/faults/`` of a copy of the prepared base, and each call takes the first
free token by renaming it (atomic, so every fault happens exactly once, in whichever worker gets
there first; the new name records the worker's pid). A call that finds no token is the real
``run_trial``. Kinds:

- ``raise``: raise RuntimeError("injected fault");
- ``nan``: the real evaluation, with the metric replaced by NaN;
- ``hang``: sleep ``HANG_S`` (the test kills the worker, or the driver's trial timeout does);
- ``gate``: wait until the test creates ``faults/open``, evaluate, then create ``faults/done``;
- ``pair``: wait until no ``pair`` token is left, then evaluate: two calls that overlap in time.
"""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

FAULTS = "faults"
HANG_S = 600.0
WAIT_S = 300.0
KERNEL = "tests.faulty_kernels:faulty"


def copy_base(prepared: Path, dest: Path, *kinds: str) -> Path:
    """A private copy of a prepared base with the given fault tokens planted, in order."""
    shutil.copytree(prepared, dest)
    folder = dest / FAULTS
    folder.mkdir()
    for i, kind in enumerate(kinds):
        (folder / f"{i:02d}-{kind}").touch()
    return dest


def claimed(prepared: Path) -> list[tuple[str, int]]:
    """(kind, worker pid) of the tokens taken so far, in token order."""
    out = []
    for path in sorted((prepared / FAULTS).iterdir()):
        name, sep, pid = path.name.partition(".claimed-")
        if sep:
            out.append((name.split("-", 1)[1], int(pid)))
    return out


def _free(folder: Path, kind: str | None = None) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if "-" in p.name and ".claimed-" not in p.name
                  and (kind is None or p.name.endswith(f"-{kind}")))


def _claim(folder: Path) -> str | None:
    if not folder.is_dir():
        return None
    for name in _free(folder):
        try:
            os.rename(folder / name, folder / f"{name}.claimed-{os.getpid()}")
        except FileNotFoundError:  # another worker took it first
            continue
        return name.split("-", 1)[1]
    return None


def _wait(done: Any) -> None:
    deadline = time.monotonic() + WAIT_S
    while not done():
        if time.monotonic() > deadline:
            raise RuntimeError("faulty kernel waited too long")
        time.sleep(0.05)


def faulty(base: Any, compression: Any, **kwargs: Any) -> Any:
    from spikeprune.trial._run import run_trial

    folder = Path(base.prepared) / FAULTS
    kind = _claim(folder)
    if kind == "raise":
        raise RuntimeError("injected fault")
    if kind == "hang":
        time.sleep(HANG_S)
        raise RuntimeError("a hanging trial was not stopped")
    if kind == "gate":
        _wait(lambda: (folder / "open").exists())
    if kind == "pair":
        _wait(lambda: not _free(folder, "pair"))
    result = run_trial(base, compression, **kwargs)
    if kind == "nan":
        result.metrics["metric"] = float("nan")
    if kind == "gate":
        (folder / "done").touch()
    return result
