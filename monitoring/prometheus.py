"""A real Prometheus next to the service, for tests and local use.

`prometheus_config(...)` builds the prometheus.yml that scrapes the service (job `lang1-ops`,
the name the alert rules expect) and loads the rules file; `PrometheusServer` starts the
Prometheus binary (Debian package `prometheus`) on 127.0.0.1 with that config, waits until it
is ready, answers instant queries through the HTTP API, and stops it. `lang1ops monitor
prometheus` (the typer `app` below) runs one in the foreground against a local service.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
import yaml

RULES_FILE = Path(__file__).parent / "rules" / "lang1-ops.rules.yml"
JOB = "lang1-ops"


def prometheus_config(targets: list[str], scrape_interval: str = "15s", rule_files: list[Path] | None = None,
                      alertmanagers: list[str] | None = None, job: str = JOB) -> dict[str, Any]:
    """prometheus.yml as a dict: scrape `targets` (host:port of the Serve HTTP proxy) at
    /metrics, evaluate `rule_files`, send alerts to `alertmanagers` (host:port)."""
    config: dict[str, Any] = {
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval},
        "scrape_configs": [{"job_name": job, "metrics_path": "/metrics", "static_configs": [{"targets": targets}]}],
    }
    if rule_files:
        config["rule_files"] = [str(Path(p).resolve()) for p in rule_files]
    if alertmanagers:
        config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": alertmanagers}]}]}
    return config


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrometheusError(RuntimeError):
    pass


class PrometheusServer:
    """One Prometheus process on 127.0.0.1 with its own config and data directory."""

    def __init__(self, workdir: Path, config: dict[str, Any], port: int | None = None, binary: str = "prometheus"):
        self.workdir, self.config = Path(workdir), config
        self.port = port or free_port()
        self.binary = shutil.which(binary) or binary
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self, timeout_s: float = 60) -> PrometheusServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config_path = self.workdir / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))
        self.log_path = self.workdir / "prometheus.log"
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [self.binary, f"--config.file={config_path}", f"--storage.tsdb.path={self.workdir / 'data'}",
                 f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
                stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise PrometheusError(f"prometheus exited with {self.process.returncode}: {self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/-/ready", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.stop()
        raise PrometheusError(f"prometheus not ready after {timeout_s} s: {self.log_tail()}")

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def __enter__(self) -> PrometheusServer:
        return self.start() if self.process is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the HTTP API

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query (`/api/v1/query`): the result vector."""
        r = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=10)
        body = r.json()
        if r.status_code != 200 or body.get("status") != "success":
            raise PrometheusError(f"query {expr!r} failed: {body.get('error', r.status_code)}")
        return body["data"]["result"]

    def value(self, expr: str) -> float | None:
        """The single value of a query that yields one series, or None when it yields none."""
        result = self.query(expr)
        if not result:
            return None
        if len(result) > 1:
            raise PrometheusError(f"query {expr!r} gave {len(result)} series; aggregate it")
        return float(result[0]["value"][1])

    def wait_for_value(self, expr: str, expected: float, timeout_s: float = 30) -> float | None:
        """Poll until `expr` equals `expected` (a scrape or two after the event); the last value."""
        deadline, last = time.monotonic() + timeout_s, None
        while time.monotonic() < deadline:
            last = self.value(expr)
            if last is not None and abs(last - expected) < 1e-9:
                return last
            time.sleep(0.5)
        return last

    def targets(self) -> list[dict[str, Any]]:
        return httpx.get(f"{self.url}/api/v1/targets", timeout=10).json()["data"]["activeTargets"]

    def rules(self) -> list[dict[str, Any]]:
        return httpx.get(f"{self.url}/api/v1/rules", timeout=10).json()["data"]["groups"]


app = typer.Typer(help="A local Prometheus that scrapes the service and evaluates its alert rules.")


@app.command("prometheus")
def run_prometheus(
    target: Annotated[list[str], typer.Option(help="host:port of the service's /metrics (repeatable)")] = ["127.0.0.1:8000"],  # noqa: B006
    workdir: Annotated[Path, typer.Option(help="Config and TSDB directory")] = Path("var/prometheus"),
    port: Annotated[int, typer.Option(help="Prometheus web port on 127.0.0.1")] = 9090,
    scrape_interval: Annotated[str, typer.Option(help="Scrape and rule evaluation interval")] = "15s",
    alertmanager: Annotated[list[str] | None, typer.Option(help="host:port of an Alertmanager (repeatable)")] = None,
) -> None:
    """Run Prometheus in the foreground until Ctrl-C."""
    server = PrometheusServer(workdir, prometheus_config(list(target), scrape_interval, [RULES_FILE], alertmanager),
                              port=port).start()
    typer.echo(f"Prometheus on {server.url} scraping {', '.join(target)}; rules from {RULES_FILE}")
    try:
        while server.process is not None and server.process.poll() is None:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
