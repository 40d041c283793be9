"""Resume and liveness: heartbeats of the drivers sharing a study, and trials left by dead ones.

Every driver writes a heartbeat (host, pid, time) into the study's system attributes and labels
each trial it asks with its identity (user attr ``driver``). A driver is alive when its process
runs (same host) or its heartbeat is recent (another host: within ``stale_after_s``). Trials left
RUNNING by a driver that is not alive are failed and their parameters enqueued again, keeping the
seed flags, so no finished trial is re-run and no config is lost.

Several live drivers may find the same dead driver's trial (all of them start together after a
restart): the one whose FAIL lands re-queues it; the others find it finished and leave it, so it
is queued once.
"""
from __future__ import annotations

import os
import socket
import time
import uuid
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState

HEARTBEAT_KEY = "spikeprune:driver:"
HEARTBEAT_EVERY_S = 30.0


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Resume:
    """One driver's view of the study's drivers: its own heartbeat, the others' liveness, re-queuing."""

    def __init__(self, study: optuna.Study, storage: optuna.storages.BaseStorage, stale_after_s: float) -> None:
        self.study, self.storage, self.stale_after_s = study, storage, stale_after_s
        self.study_id = storage.get_study_id_from_name(study.study_name)
        self.host, self.pid = socket.gethostname(), os.getpid()
        #: What this driver writes on every trial it asks (user attr ``driver``).
        self.identity = {"id": uuid.uuid4().hex[:12], "host": self.host, "pid": self.pid}
        self.last_beat = 0.0

    def recover(self) -> list[int]:
        """Fail trials left RUNNING by dead drivers and enqueue their parameters again; their numbers."""
        self.heartbeat(force=True)
        # Trials before heartbeats: a driver writes its heartbeat before it asks any trial, so every
        # owner of a trial listed here has a beat in the later read. The other order let a driver
        # that started a moment after us be taken for dead and its first trial re-queued.
        running = self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        beats = self.beats()
        others_alive = self.others_alive(beats)
        re_queued = []
        for t in running:
            owner = t.user_attrs.get("driver")
            # A trial without an owner was just asked by a driver that has not labelled it yet.
            if self.alive(owner.get("id"), beats) if isinstance(owner, dict) else others_alive:
                continue
            # An enqueued config (a seed, a retry) may die before all of it was drawn: keep it whole.
            params = {**t.system_attrs.get("fixed_params", {}), **t.params}
            if self.requeue(t.number, params, t.user_attrs, f"driver {self.who(owner)} stopped while the trial ran"):
                re_queued.append(t.number)
        return re_queued

    @staticmethod
    def who(owner: Any) -> str:
        return f"{owner.get('host')}:{owner.get('pid')}" if isinstance(owner, dict) else "an unknown process"

    def beats(self) -> dict[str, Any]:
        return {k[len(HEARTBEAT_KEY):]: v for k, v in self.storage.get_study_system_attrs(self.study_id).items()
                if k.startswith(HEARTBEAT_KEY)}

    def others_alive(self, beats: dict[str, Any] | None = None) -> bool:
        """Whether another driver runs on the study now."""
        beats = self.beats() if beats is None else beats
        return any(self.alive(d, beats) for d in beats if d != self.identity["id"])

    def alive(self, driver_id: Any, beats: dict[str, Any]) -> bool:
        """Whether a driver still runs: its process when it is on this host, else a recent heartbeat."""
        if driver_id == self.identity["id"]:
            return True
        beat = beats.get(driver_id)
        if not isinstance(beat, dict):
            return False
        if beat.get("host") == self.host:
            pid = int(beat.get("pid") or 0)
            return pid > 0 and _pid_alive(pid)
        return time.time() - float(beat.get("time", 0)) <= self.stale_after_s

    def heartbeat(self, force: bool = False) -> None:
        now = time.time()
        if force or now - self.last_beat >= HEARTBEAT_EVERY_S:
            self.storage.set_study_system_attr(self.study_id, HEARTBEAT_KEY + self.identity["id"],
                                               {"time": now, "host": self.host, "pid": self.pid})
            self.last_beat = now

    def requeue(self, number: int, params: dict[str, Any], attrs: dict[str, Any], reason: str) -> bool:
        """Fail a RUNNING trial and enqueue its parameters again (keeping its seed flags); False when
        the trial was finished meanwhile (another driver re-queued it first), and then nothing is done.

        The FAIL goes to the storage, which takes one finishing write per trial: a driver whose FAIL
        finds the trial finished did not re-queue it, so a config is queued once however many
        drivers find the trial. A FAIL retried after a lost connection cannot tell the two apart
        (``RetryingStorage`` sees the FAIL it meant to write), so a retry already queued for the
        trial is not queued again."""
        trial_id = self.storage.get_trial_id_from_study_id_trial_number(self.study_id, number)
        try:
            self.storage.set_trial_user_attr(trial_id, "error", f"{reason}; re-queued")
            self.storage.set_trial_state_values(trial_id, TrialState.FAIL)
        except UpdateFinishedTrialError:
            return False
        if params and not any(t.user_attrs.get("retry_of") == number for t in self.study.get_trials(deepcopy=False)):
            flags = {k: attrs[k] for k in ("seeded", "baseline") if k in attrs}
            self.study.enqueue_trial(params, user_attrs={**flags, "retry_of": number})
        return True
