"""Helpers shared by tests: a free local port, the harness of multi-process tests, and the
command-line tools as modules."""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Sequence

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYTHON = sys.executable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load_tool(name: str):
    """tools/{name}.py as a module (the tools are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "tools", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # Dataclasses defined in it look their module up.
    spec.loader.exec_module(module)
    return module


def cpu_env(devices: int = 1) -> dict[str, str]:
    """The environment of a JAX subprocess on `devices` simulated CPU devices (gloo collectives
    when it joins a multi-process job)."""
    return {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_CPU_COLLECTIVES_IMPLEMENTATION": "gloo",
            "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}


def start_processes(command: Callable[[int, int], Sequence[str]], num_processes: int = 2,
                    devices: int = 1) -> list[subprocess.Popen]:
    """`command(process_id, port)` for each process of a `jax.distributed` job on 127.0.0.1,
    run from the repository root; stdout and stderr together."""
    port = free_port()
    return [subprocess.Popen(list(command(i, port)), cwd=ROOT, env=cpu_env(devices),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for i in range(num_processes)]


def finish(procs: list[subprocess.Popen], timeout: float = 600) -> list[str]:
    """Each process's output once all have exited 0; a hung collective fails the test (every
    process killed) instead of stalling it."""
    try:
        logs = [p.communicate(timeout=timeout)[0] for p in procs]
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        pytest.fail(f"processes did not finish within {timeout} s")
    for i, (p, log) in enumerate(zip(procs, logs, strict=True)):
        assert p.returncode == 0, f"process {i} failed:\n{log[-4000:]}"
    return logs


def run_processes(command: Callable[[int, int], Sequence[str]], num_processes: int = 2,
                  devices: int = 1, timeout: float = 600) -> list[str]:
    """`start_processes`, then `finish`."""
    return finish(start_processes(command, num_processes, devices), timeout)
