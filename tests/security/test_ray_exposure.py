"""Ray as `lang1ops serve` starts it: no port on a non-loopback address, strangers refused by
token authentication, and nothing left behind when the service is killed."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[2]

# The service's Ray, started the way serving.app.run starts it, with a Serve HTTP proxy on loopback.
SERVICE = """
import json, sys, time
from lang1ops.ray_local import ensure_ray
ensure_ray(num_cpus=1)
import ray
from ray import serve

@serve.deployment(ray_actor_options={"num_cpus": 0.1})
def hello(request):
    return "ok"

serve.start(http_options={"host": "127.0.0.1", "port": int(sys.argv[1])})
serve.run(hello.bind(), name="probe", route_prefix="/")
print(json.dumps({"gcs": ray.get_runtime_context().gcs_address}), flush=True)
time.sleep(600)
"""

STRANGER = """
import sys, ray
ray.init(address=sys.argv[1], log_to_driver=False)
print("JOINED", ray.get(ray.remote(lambda: 1).remote()))
"""


def external_addresses() -> list[str]:
    """This machine's IPv4 addresses that are not loopback (where another host would connect)."""
    found = [a.address for addrs in psutil.net_if_addrs().values() for a in addrs
             if a.family == socket.AF_INET and not a.address.startswith("127.")]
    return found


def listening(processes: list[psutil.Process]) -> list[tuple[str, int, str]]:
    out = []
    for process in processes:
        try:
            for conn in process.net_connections(kind="inet"):
                if conn.status == psutil.CONN_LISTEN:
                    out.append((conn.laddr.ip, conn.laddr.port, process.name()))
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def service():
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["PYTHONPATH"] = str(ROOT)
    process = subprocess.Popen([sys.executable, "-c", SERVICE, str(free_port())], cwd=ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    line = process.stdout.readline()
    assert line, "the service's Ray did not start"
    gcs = json.loads(line)["gcs"]
    time.sleep(2)  # the dashboard agent and runtime-env agent bind shortly after the driver connects
    yield {"process": process, "gcs": gcs, "env": env}
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(30)


def test_every_ray_port_listens_on_loopback_only(service):
    processes = psutil.Process(service["process"].pid).children(recursive=True)
    names = {p.name() for p in processes}
    assert any("gcs_server" in n for n in names) and any("raylet" in n for n in names), names
    ports = listening(processes)
    assert len(ports) >= 5, ports
    exposed = [p for p in ports if not p[0].removeprefix("::ffff:").startswith("127.")]
    assert not exposed, f"Ray ports on non-loopback addresses: {exposed}"
    assert service["gcs"].startswith("127.0.0.1:")
    # and, from the outside's point of view, nothing answers on the machine's other addresses
    for address in external_addresses():
        for _, port, name in ports:
            with socket.socket() as s:
                s.settimeout(1)
                assert s.connect_ex((address, port)) != 0, f"{name} accepts connections on {address}:{port}"


def test_a_client_without_the_token_is_refused(service):
    # a local stranger (from another host nothing is listening: see above); the variable keeps its
    # Ray client on 127.0.0.1 instead of resolving it to this machine's external address
    local = dict(service["env"], RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
    stranger = subprocess.run([sys.executable, "-c", STRANGER, service["gcs"]], cwd=ROOT, env=local,
                              capture_output=True, text=True, timeout=180)
    assert stranger.returncode != 0 and "JOINED" not in stranger.stdout
    assert "AuthenticationError" in stranger.stderr or "auth" in stranger.stderr.lower()
    wrong = dict(local, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN="0" * 64)
    stranger = subprocess.run([sys.executable, "-c", STRANGER, service["gcs"]], cwd=ROOT, env=wrong,
                              capture_output=True, text=True, timeout=180)
    assert stranger.returncode != 0 and "JOINED" not in stranger.stdout


def test_a_killed_service_leaves_no_ray_process_behind(service):
    processes = psutil.Process(service["process"].pid).children(recursive=True)
    assert processes
    service["process"].kill()  # kill -9 of the service process alone, not its group
    service["process"].wait(30)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        alive = [p for p in processes if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        if not alive:
            break
        time.sleep(1)
    assert not alive, f"left behind: {sorted({p.name() for p in alive})}"
