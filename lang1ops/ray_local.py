"""Starting Ray the way this project runs it on one machine: local only, on 127.0.0.1,
without the dashboard. On a cluster (KubeRay) `address` points at the head instead."""

from __future__ import annotations

import os


def ensure_ray(num_cpus: int | None = None, address: str | None = None) -> None:
    import ray

    if ray.is_initialized():
        return
    # keep the node on the loopback interface; local tests run without cluster auth
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # On a busy 2-core node the HTTP proxy can take longer than Serve's 5 s readiness check to
    # import FastAPI and bind; the default would kill and restart it in a loop.
    for name, seconds in (("RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S", "60"), ("RAY_SERVE_PROXY_HEALTH_CHECK_TIMEOUT_S", "30"),
                          ("RAY_SERVE_PROXY_GRACEFUL_SHUTDOWN_TIMEOUT_S", "10")):
        os.environ.setdefault(name, seconds)
    if address:
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    else:
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
                 _node_ip_address="127.0.0.1")
