"""Step metrics: one JSON line per step in `{workdir}/metrics.jsonl` (always), TensorBoard
scalars (tensorboardX, no TensorFlow) when enabled. Only process 0 writes."""

from __future__ import annotations

import json
import math
import os
from typing import Any

import jax
import numpy as np


def _plain(value: Any) -> Any:
    """JSON-safe scalar: numpy/jax scalars to Python, non-finite floats to strings."""
    if isinstance(value, (np.ndarray, np.generic, jax.Array)):
        value = np.asarray(value).item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class MetricsWriter:
    def __init__(self, workdir: str, tensorboard: bool = True, filename: str = "metrics.jsonl"):
        self.active = jax.process_index() == 0
        self.path = os.path.join(workdir, filename)
        self.tb = None
        if self.active:
            os.makedirs(workdir, exist_ok=True)
            if tensorboard:
                from tensorboardX import SummaryWriter

                self.tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def truncate_after(self, step: int) -> None:
        """Drops lines past `step`: a resumed run rewrites the steps it repeats."""
        if not self.active or not os.path.exists(self.path):
            return
        with open(self.path) as f:
            lines = [line for line in f if line.strip() and json.loads(line)["step"] <= step]
        with open(self.path, "w") as f:
            f.writelines(lines)

    def write(self, step: int, metrics: dict[str, Any]) -> dict[str, Any]:
        line = {"step": step, **{k: _plain(v) for k, v in sorted(metrics.items())}}
        if self.active:
            with open(self.path, "a") as f:
                f.write(json.dumps(line) + "\n")
            if self.tb is not None:
                for k, v in line.items():
                    if k != "step" and isinstance(v, (int, float)):
                        self.tb.add_scalar(k, v, step)
                self.tb.flush()
        return line

    def where(self) -> str:
        """Where the metrics go, for a person."""
        tb = f", TensorBoard logs in {self.tb.logdir}" if self.tb is not None else ""
        return f"metrics in {self.path}{tb}"

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
