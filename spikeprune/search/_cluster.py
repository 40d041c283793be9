"""The Ray connection of a search: an existing cluster (``ray_address``) or a local one.

A local cluster is sized for ``workers`` trials, listens on 127.0.0.1 only, and sends no usage
statistics; it is stopped when the search ends. Either way the cluster must have the CPUs and
GPUs one trial asks for.
"""
from __future__ import annotations

import os
import socket
from contextlib import contextmanager
from typing import Iterator

from spikeprune.errors import SpikepruneError

from spikeprune.search._settings import SearchSettings

LOCAL_RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


#: How long the head of a cluster (``--ray-address``) gets to accept a connection.
CONNECT_TIMEOUT_S = 10.0


def check_reachable(address: str) -> None:
    """Fail fast on a ``host:port`` nobody listens on (Ray itself would retry for minutes).
    ``auto`` and ``ray://`` client addresses are left to Ray."""
    host, sep, port = address.rpartition(":")
    if address == "auto" or "://" in address or not sep or not port.isdigit():
        return
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as e:
        raise SpikepruneError(f"cannot reach the Ray cluster at {address} ({e.strerror or e}); start it with "
                              f"`ray start --head --port {port}` or fix --ray-address") from None


@contextmanager
def ray_session(settings: SearchSettings) -> Iterator[None]:
    """Connect to ``ray_address``, reuse an initialised Ray, or start a local cluster sized for
    ``workers`` tasks (and stop it afterwards)."""
    if not settings.ray_address:
        # A laptop cluster: no usage reporting, no token file, loopback only (docs/DESIGN.md).
        for key, value in LOCAL_RAY_ENV.items():
            os.environ.setdefault(key, value)
    import ray

    started = False
    if not ray.is_initialized():
        if settings.ray_address:
            ray.init(address=settings.ray_address, log_to_driver=False)
        else:
            if os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER") == "0":
                # Ray reads this switch once, on import: apply it in case Ray was imported before.
                import ray._private.ray_constants as ray_constants
                ray_constants.ENABLE_RAY_CLUSTER = False
            gpus = settings.workers * settings.gpus_per_trial
            # A laptop cluster listens on loopback only (Ray would bind the external address).
            ray.init(num_cpus=max(1, round(settings.workers * settings.cpus_per_trial)),
                     num_gpus=None if gpus == 0 else max(1, round(gpus)), include_dashboard=False,
                     log_to_driver=False, _node_ip_address="127.0.0.1")
        started = True
    try:
        have = ray.cluster_resources()
        for key, need in (("CPU", settings.cpus_per_trial), ("GPU", settings.gpus_per_trial)):
            if need and have.get(key, 0) < need:
                raise SpikepruneError(f"each trial asks for {need:g} {key} but the Ray cluster has "
                                      f"{have.get(key, 0):g}; lower --{key.lower()}s-per-trial or add resources")
        yield
    finally:
        if started:
            ray.shutdown()

