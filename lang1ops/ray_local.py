"""Starting Ray the way this project runs it on one machine: local only, every port on
127.0.0.1, token authentication on, without the dashboard. On a cluster (KubeRay) `address`
points at the head instead, and the cluster's own token (a Kubernetes Secret) is used.

Why each setting:
- Ray's gRPC servers (GCS, raylet, every worker) listen on 127.0.0.1 only when the node's IP is
  exactly 127.0.0.1; otherwise on 0.0.0.0. `_node_ip_address="127.0.0.1"` alone is not enough:
  Ray resolves a loopback address to the machine's external one unless its "cluster" mode is
  off (`RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`, read when `ray` is first imported; the constant
  is set too in case `ray` was imported before this module ran).
- Serve's direct ingress (a gRPC server per ingress replica, always on [::]) is off: requests
  reach replicas through the HTTP proxy, which listens where settings say (127.0.0.1).
- Serve replicas always open a gRPC server for calls between deployments on [::] (token
  authenticated, but reachable from the network); a worker setup hook
  (`keep_grpc_on_loopback`) makes Ray's one helper that binds such servers use 127.0.0.1.
- A port that is reachable at all (another local user, a cluster) must refuse strangers: Ray's
  token authentication (`RAY_AUTH_MODE=token`) with a random token per local cluster, handed to
  Ray's own processes through the environment they inherit, never written to a log.
"""

from __future__ import annotations

import os
import secrets

LOOPBACK = "127.0.0.1"
_LOCAL_ENV = {  # defaults a caller may override; the security settings below are forced
    "RAY_USAGE_STATS_ENABLED": "0",
    # On a busy 2-core node the HTTP proxy can take longer than Serve's 5 s readiness check to
    # import FastAPI and bind; the default would kill and restart it in a loop.
    "RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": "60",
    "RAY_SERVE_PROXY_HEALTH_CHECK_TIMEOUT_S": "30",
    "RAY_SERVE_PROXY_GRACEFUL_SHUTDOWN_TIMEOUT_S": "10",
}


def keep_grpc_on_loopback() -> None:
    """Worker setup hook of a local Ray: a Python gRPC server that Ray binds to every interface
    ("[::]:port", "0.0.0.0:port") binds to 127.0.0.1 instead. Runs in each worker before any
    actor's module is imported, so modules that import the helper by name get this one."""
    from ray._common import tls_utils

    if getattr(tls_utils.add_port_to_grpc_server, "keeps_loopback", False):
        return
    original = tls_utils.add_port_to_grpc_server

    def add_port_to_grpc_server(server, address: str):
        host, _, port = address.rpartition(":")
        if host in ("[::]", "0.0.0.0", ""):
            address = f"{LOOPBACK}:{port}"
        return original(server, address)

    add_port_to_grpc_server.keeps_loopback = True
    tls_utils.add_port_to_grpc_server = add_port_to_grpc_server


def ensure_ray(num_cpus: int | None = None, address: str | None = None) -> None:
    """Initialise Ray once per process: a new local, loopback-only, authenticated instance, or
    (with `address`) a connection to an existing cluster."""
    if address is None:
        for name, value in _LOCAL_ENV.items():
            os.environ.setdefault(name, value)
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # loopback stays loopback (see above)
        os.environ["RAY_AUTH_MODE"] = "token"  # never "disabled", whatever the environment says
        # Serve's "direct ingress" opens an unauthenticated gRPC server on [::] in each ingress
        # replica; locally every request goes through the proxy on 127.0.0.1 instead.
        os.environ["RAY_SERVE_ENABLE_DIRECT_INGRESS"] = "0"
        if not (os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")):
            os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)  # inherited by Ray's own processes only
    import ray
    from ray._private import ray_constants

    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
        return
    ray_constants.ENABLE_RAY_CLUSTER = False  # `ray` may have been imported before the variable was set
    # Ray reads its config (the auth mode among it) and the token once per process: re-read them,
    # in case `ray` was imported before the variables above were set
    from ray._raylet import AuthenticationTokenLoader, Config

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
             _node_ip_address=LOOPBACK,
             runtime_env={"worker_process_setup_hook": f"{__name__}.{keep_grpc_on_loopback.__name__}"})
