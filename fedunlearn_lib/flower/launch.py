"""Run the app from Python: Flower's CLI and local processes, with nothing left behind.

``local_deployment`` starts a SuperLink and one SuperNode per node config on free local
ports and stops every process it started on exit (even on error); ``flwr_run`` submits
the app and waits for its end; ``stop_local_superlink`` ends the SuperLink that
``flwr run . local`` starts (and leaves running) for the simulation engine. Every
command runs with ``flower_env``: Flower's home pinned, telemetry and update checks off,
no per-run dependency installation (the app runs in this environment).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

REPO = Path(__file__).resolve().parents[2]


def flower_env(home: str | os.PathLike, **extra: str) -> dict[str, str]:
    """This environment plus Flower's home ``home`` and its switches off, with this
    interpreter's scripts first on ``PATH`` (Flower starts ``flwr-serverapp`` and
    ``flwr-clientapp`` by name)."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return {**os.environ, "PATH": path, "FLWR_HOME": str(home), "FLWR_TELEMETRY_ENABLED": "0",
            "FLWR_DISABLE_UPDATE_CHECK": "1", "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
            **extra}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_config_arg(values: dict[str, Any]) -> str:
    """``--run-config`` text: ``key=value`` pairs, strings quoted."""
    def fmt(v: Any) -> str:
        if isinstance(v, bool):
            return str(v).lower()
        return f"'{v}'" if isinstance(v, str) else str(v)
    return " ".join(f"{k}={fmt(v)}" for k, v in values.items())


@dataclass
class Deployment:
    """A running local deployment."""

    port: int  # the SuperLink's one HTTP port (Fleet, Control and ServerAppIo APIs)
    env: dict[str, str]
    logs: Path
    processes: list[subprocess.Popen] = field(default_factory=list)


def _stop(processes: list[subprocess.Popen]) -> None:
    for p in processes:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    for p in processes:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


@contextmanager
def local_deployment(node_configs: list[str], home: str | os.PathLike,
                     env: dict[str, str] | None = None,
                     startup_timeout: float = 60) -> Iterator[Deployment]:
    """A SuperLink and ``len(node_configs)`` SuperNodes (``--node-config`` text each) on
    this machine, each in a process group of its own, stopped on exit; logs in
    ``home/logs``. The Flower CLI in ``env`` reaches it as connection ``deploy``."""
    home = Path(home)
    logs = home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = env or flower_env(home)
    link = free_port()
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "deploy"\n\n[superlink.deploy]\n'
        f'address = "127.0.0.1:{link}"\ninsecure = true\n')
    dep = Deployment(link, env, logs)

    def start(name: str, args: list[str]) -> None:
        with open(logs / f"{name}.log", "w") as fh:
            dep.processes.append(subprocess.Popen(args, env=env, stdout=fh,
                                                  stderr=subprocess.STDOUT,
                                                  start_new_session=True))
    try:
        start("superlink", ["flower-superlink", "--insecure", "--host", "127.0.0.1",
                            "--port", str(link), "--disable-runtime-dependency-installation"])
        _wait_healthy(link, dep, startup_timeout)
        for i, conf in enumerate(node_configs):
            start(f"supernode{i}", ["flower-supernode", "--insecure", "--superlink",
                                    f"127.0.0.1:{link}", "--port", str(free_port()),
                                    "--node-config", conf])
        yield dep
    finally:
        _stop(dep.processes[::-1])


def _wait_healthy(port: int, dep: Deployment, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if dep.processes[0].poll() is not None:
            raise RuntimeError(f"flower-superlink exited; see {dep.logs / 'superlink.log'}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"flower-superlink not healthy on port {port} after {timeout:.0f} s")


def flwr_run(connection: str, run_config: dict[str, Any], env: dict[str, str], *,
             app: str | os.PathLike | None = None, federation_config: str | None = None,
             timeout: float = 600, log: str | os.PathLike | None = None) -> dict:
    """``flwr run APP CONNECTION``, wait for the run to end, and return its entry from
    ``flwr ls`` (``status`` is ``finished:completed`` when the ServerApp succeeded; the
    run's log goes to ``log``). ``flwr run`` itself exits 0 even when the app fails, so
    the status is what tells. ``app`` defaults to ``stage_app`` of this repository."""
    cwd = Path(env["FLWR_HOME"])  # not the app folder: workers would import its sources
    app = app if app is not None else stage_app(cwd / "app-bundle")
    args = ["flwr", "run", str(app), connection, "--format", "json",
            "--run-config", run_config_arg(run_config)]
    if federation_config:
        args += ["--federation-config", federation_config]
    out = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=120)
    if out.returncode:
        raise RuntimeError(f"flwr run failed ({out.returncode}): {out.stdout}{out.stderr}")
    run_id = json.loads(out.stdout)["run-id"]
    streamed = subprocess.run(["flwr", "log", str(run_id), connection, "--stream"], env=env,
                              cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if log is not None:
        Path(log).write_text(streamed.stdout + streamed.stderr)
    listing = subprocess.run(["flwr", "ls", connection, "--run-id", str(run_id), "--format",
                              "json"], env=env, cwd=cwd, capture_output=True, text=True,
                             timeout=60)
    return json.loads(listing.stdout)["runs"][0]


def stage_app(dest: str | os.PathLike) -> Path:
    """A copy of the app's bundle (``pyproject.toml`` and ``fedunlearn_lib/``, what its
    ``fab-include`` names) in ``dest``: ``flwr run`` walks every file under the folder it
    is given before it filters, and the repository's virtual environment alone is tens of
    thousands (about 10 s per run); the bundle built from the copy is the same."""
    dest = Path(dest)
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(REPO / "fedunlearn_lib", dest / "fedunlearn_lib",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copy2(REPO / "pyproject.toml", dest / "pyproject.toml")
    return dest


def stop_local_superlink(home: str | os.PathLike) -> list[int]:
    """Stop the SuperLink ``flwr run . local`` started with Flower home ``home`` (its log
    lies under it); returns the process ids stopped."""
    marker = str(Path(home) / "local-superlink")
    stopped = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "flower-superlink" in cmd and marker in cmd:
            os.kill(int(proc.name), signal.SIGTERM)
            stopped.append(int(proc.name))
    return stopped
