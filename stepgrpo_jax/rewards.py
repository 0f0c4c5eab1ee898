"""Rewards: step counting, answer extraction, math-verify grading, and the group rewards.

Everything here is host-side Python/NumPy (SPEC §2 text rule, §4). The trainer calls
`score_completions` once per rollout step with the decoded completions laid out group after
group; grading runs in a `Grader`, a small pool of worker processes that survives across steps
and kills any worker that overruns its per-answer timeout.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import multiprocessing as mp
import os
import re
import signal
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from multiprocessing.connection import wait as wait_connections
from typing import Any

import math_verify
import numpy as np

THINK_END = "</think>"
KINDS = ("step_grpo", "step_grpo_all_mu", "no_step", "grpo", "grpo_lp")

# ---------------------------------------------------------------------------------------------
# Steps (SPEC §2, text rule).
# ---------------------------------------------------------------------------------------------

# Decoded text may carry "< /think >"-style spacing; the reference run squeezes it out first.
_TAG_SPACE = re.compile(r"\s*([<>/])\s*")


@functools.cache
def _trigger_pattern(trigger: str) -> re.Pattern[str]:
    # Only letters block a match: "Waiting"/"AWait" do not count, "(Wait", "Wait," and "Wait5" do.
    return re.compile(rf"(?<![A-Za-z]){re.escape(trigger)}(?![A-Za-z])")


def count_triggers(text: str, triggers: Sequence[str] = ("Wait",)) -> int:
    """N_trig: whole-word, case-sensitive trigger occurrences, summed over the triggers.

    Exposed on its own because the sampler checks its in-graph counts against it.
    """
    text = _TAG_SPACE.sub(r"\1", text)
    return sum(len(_trigger_pattern(t).findall(text)) for t in triggers)


def count_steps(text: str, triggers: Sequence[str] = ("Wait",)) -> int:
    """Step count k = 1 + N_trig over the whole response (thinking and answer)."""
    return 1 + count_triggers(text, triggers)


# ---------------------------------------------------------------------------------------------
# Answer extraction.
# ---------------------------------------------------------------------------------------------


def split_answer(text: str) -> str:
    """The answer part: text after the last `</think>`, or all of it when thinking never closed."""
    return text.rpartition(THINK_END)[2]


def extract_boxed(text: str) -> str | None:
    r"""Content of the last `\boxed{...}` of the answer part (nested braces allowed).

    Also accepts `\boxed 5` (one token after a space). None when there is no box, the last box is
    unbalanced (a truncated answer) or empty (the prompt's literal `\boxed{}` echoed back).
    """
    answer = split_answer(text)
    start = answer.rfind("\\boxed")
    if start < 0:
        return None
    rest = answer[start + len("\\boxed"):]
    if not rest.lstrip().startswith("{"):
        token = rest.split(maxsplit=1) if rest[:1].isspace() else []
        content = token[0].rstrip("$.") if token else ""
        return content or None
    rest = rest.lstrip()
    depth = 0
    for i, ch in enumerate(rest):
        depth += (ch == "{") - (ch == "}")
        if depth == 0:
            content = rest[1:i].strip()
            return content or None
    return None


# ---------------------------------------------------------------------------------------------
# Grading.
# ---------------------------------------------------------------------------------------------


def math_verify_equal(gold: str, pred: str) -> bool:
    r"""math-verify equivalence of two bare answers, gold first (verify is not symmetric).

    Both sides are wrapped as `\boxed{...}` before parsing: math-verify's LaTeX extractor then
    takes the box content as a whole, so `\frac{1}{2}` = `0.5` and `\text{(A)}` = `A` = `(A)`
    (choice letters are normalised). Unwrapped strings are only partly extracted (`\text{(A)}`
    vs `A` fails). Its own signal timeouts are off: the Grader's parent process enforces ours.
    """
    parsed_gold = math_verify.parse(f"\\boxed{{{gold}}}", parsing_timeout=None)
    parsed_pred = math_verify.parse(f"\\boxed{{{pred}}}", parsing_timeout=None)
    return bool(math_verify.verify(parsed_gold, parsed_pred, timeout_seconds=None))


@dataclasses.dataclass
class GradeResult:
    correct: np.ndarray  # [N] bool
    timeouts: int  # answers killed at the per-answer timeout (counted as wrong)


def _worker_main(conn: Any, verify_fn: Callable[[str, str], bool]) -> None:
    # Ctrl-C goes to the parent, which tears the pool down; workers would only add tracebacks.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # math-verify warns once per process that its timeouts are off; that is on purpose here.
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    # Warm up (sympy/antlr imports, grammar load) before saying ready, so that start-up time is
    # never charged to an answer's timeout.
    verify_fn("1", "1")
    conn.send("ready")
    while True:
        try:
            msg = conn.recv()
        except EOFError:
            return
        if msg is None:
            return
        gold, pred = msg
        try:
            ok = bool(verify_fn(gold, pred))
        except Exception:  # a grader crash on odd input is a wrong answer, not a dead worker
            ok = False
        conn.send(ok)


class _Worker:
    """One grading process and its pipe; `task` is the answer index it is grading, if any."""

    def __init__(self, ctx: Any, verify_fn: Callable[[str, str], bool]):
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_main, args=(child, verify_fn), daemon=True)
        self.proc.start()
        child.close()
        self.ready = False
        self.task: int | None = None
        self.deadline = 0.0
        self.started = time.monotonic()

    def kill(self) -> None:
        self.proc.kill()
        self.proc.join()
        self.conn.close()


class Grader:
    """A reusable pool of grading processes with a per-answer timeout enforced by the parent.

    A pathological answer (sympy can spin for minutes on `9^{9^{9^{9}}}`) gets its worker killed
    and replaced after `timeout_s`; it counts as wrong and in `GradeResult.timeouts`. Workers are
    spawned, not forked, because the parent is a multithreaded JAX process. `verify_fn(gold,
    pred) -> bool` must be a picklable module-level function (tests inject a slow one).
    """

    def __init__(self, num_workers: int | None = None, timeout_s: float = 5.0,
                 verify_fn: Callable[[str, str], bool] = math_verify_equal,
                 startup_timeout_s: float = 120.0):
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self.num_workers = num_workers or min(8, os.cpu_count() or 1)
        self.timeout_s = timeout_s
        self.startup_timeout_s = startup_timeout_s
        self._verify_fn = verify_fn
        self._ctx = mp.get_context("spawn")
        self._workers: list[_Worker] | None = [
            _Worker(self._ctx, verify_fn) for _ in range(self.num_workers)]

    def _replace(self, w: _Worker) -> None:
        w.kill()
        self._workers[self._workers.index(w)] = _Worker(self._ctx, self._verify_fn)

    def wait_ready(self) -> None:
        """Blocks until every worker has started; otherwise the first `grade` waits for them."""
        for w in self._workers or []:
            if w.ready:
                continue
            try:
                if not w.conn.poll(max(0.0, w.started + self.startup_timeout_s - time.monotonic())):
                    raise RuntimeError(f"grading worker not ready after {self.startup_timeout_s}s")
                w.conn.recv()
            except (EOFError, OSError):
                raise RuntimeError("grading worker died during start-up") from None
            w.ready = True

    def grade(self, golds: Sequence[str], preds: Sequence[str | None]) -> GradeResult:
        """Grades pred i against gold i; a None pred (nothing extracted) is wrong, unsent."""
        if len(golds) != len(preds):
            raise ValueError(f"{len(golds)} golds but {len(preds)} preds")
        if self._workers is None:
            raise RuntimeError("Grader is closed")
        for w in list(self._workers):
            if w.task is not None:  # left over by an interrupted call: its reply would be stale
                self._replace(w)
        correct = np.zeros(len(preds), dtype=bool)
        todo = deque(i for i, p in enumerate(preds) if p is not None)
        timeouts = 0
        while todo or any(w.task is not None for w in self._workers):
            now = time.monotonic()
            for w in self._workers:
                if todo and w.ready and w.task is None:
                    i = todo.popleft()
                    try:
                        w.conn.send((golds[i], preds[i]))
                    except OSError:  # the worker died while idle: requeue on a fresh one
                        todo.appendleft(i)
                        self._replace(w)
                        continue
                    w.task, w.deadline = i, now + self.timeout_s
            # Wait for a result, a ready signal, or the earliest deadline, whichever comes first.
            pending = [w for w in self._workers if w.task is not None or not w.ready]
            deadlines = [w.deadline if w.ready else w.started + self.startup_timeout_s
                         for w in pending]
            ready = wait_connections([w.conn for w in pending],
                                     timeout=max(0.0, min(deadlines) - now))
            now = time.monotonic()
            for w in pending:
                if w.conn in ready:
                    try:
                        msg = w.conn.recv()
                    except (EOFError, OSError):
                        if not w.ready:  # e.g. verify_fn cannot be imported: retrying won't help
                            raise RuntimeError("grading worker died during start-up") from None
                        self._replace(w)  # crashed mid-answer (e.g. killed for memory): wrong
                        continue
                    if w.ready:
                        correct[w.task], w.task = bool(msg), None
                    else:
                        w.ready = True
                elif w.ready and now >= w.deadline:
                    timeouts += 1
                    self._replace(w)
                elif not w.ready and now >= w.started + self.startup_timeout_s:
                    raise RuntimeError(f"grading worker not ready after {self.startup_timeout_s}s")
        return GradeResult(correct=correct, timeouts=timeouts)

    def close(self) -> None:
        """Stops the workers; a worker stuck on an answer is killed rather than waited for."""
        if self._workers is None:
            return
        for w in self._workers:
            with contextlib.suppress(OSError):  # already dead: kill() below tidies up
                w.conn.send(None)
        for w in self._workers:
            w.proc.join(timeout=1.0)
            w.kill()
        self._workers = None

    def __enter__(self) -> Grader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def grade_batch(golds: Sequence[str], preds: Sequence[str | None], timeout_s: float = 5.0,
                num_workers: int | None = None,
                verify_fn: Callable[[str, str], bool] = math_verify_equal) -> GradeResult:
    """One-shot grading with a temporary pool (evaluation); training keeps one `Grader` open."""
    with Grader(num_workers, timeout_s, verify_fn) as grader:
        return grader.grade(golds, preds)


# ---------------------------------------------------------------------------------------------
# Group rewards (SPEC §4): each function takes the G completions of one prompt.
# ---------------------------------------------------------------------------------------------


def _as_flags(name: str, x: Any) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 1:
        raise ValueError(f"{name} must be 1-D over the group, got shape {x.shape}")
    if not np.isin(x, (0, 1)).all():
        raise ValueError(f"{name} must be boolean (0/1), got {x}")
    return x.astype(bool)


def _check_lengths(**arrays: np.ndarray) -> None:
    sizes = {k: len(v) for k, v in arrays.items()}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"group arrays differ in length: {sizes}")
    if next(iter(sizes.values())) == 0:
        raise ValueError("empty group")


def step_aware_rewards(correct: Any, formatted: Any, steps: Any, alpha: float = 0.9,
                       beta: float = 0.5, baseline: str = "correct") -> np.ndarray:
    """Step-Aware Relative Reward of one group: fewer steps than the group's mean earns a bonus.

    R_i = alpha*acc_i*(1 - beta*tanh((k_i - mu)/mu)) + (1 - alpha)*fmt_i, mu the mean step count
    over the correct completions (baseline="correct") or over all G ("all", an ablation). With no
    correct completion R_i = (1 - alpha)*fmt_i.
    """
    acc, fmt = _as_flags("correct", correct), _as_flags("formatted", formatted)
    k = np.asarray(steps, dtype=np.float64)
    _check_lengths(correct=acc, formatted=fmt, steps=k)
    if baseline not in ("correct", "all"):
        raise ValueError(f"baseline must be 'correct' or 'all', got {baseline!r}")
    if (k < 1).any():
        raise ValueError(f"step counts must be >= 1, got {k}")
    if not acc.any():
        return (1 - alpha) * fmt
    mu = k[acc].mean() if baseline == "correct" else k.mean()
    return alpha * acc * (1 - beta * np.tanh((k - mu) / mu)) + (1 - alpha) * fmt


def accuracy_format_rewards(correct: Any, formatted: Any, alpha: float = 0.9) -> np.ndarray:
    """Ablation "step reward off": alpha*acc + (1 - alpha)*fmt."""
    acc, fmt = _as_flags("correct", correct), _as_flags("formatted", formatted)
    _check_lengths(correct=acc, formatted=fmt)
    return alpha * acc + (1 - alpha) * fmt


def accuracy_rewards(correct: Any) -> np.ndarray:
    """Plain GRPO: 1 for a correct answer, 0 otherwise."""
    return _as_flags("correct", correct).astype(np.float64)


def length_penalty_rewards(correct: Any, lengths: Any) -> np.ndarray:
    """GRPO+LP, Kimi k1.5: acc + lam if correct, acc + min(0, lam) if wrong.

    lam = 0.5 - (len - min_len)/(max_len - min_len) over the group; 0 when all lengths are equal.
    """
    acc = _as_flags("correct", correct)
    n = np.asarray(lengths, dtype=np.float64)
    _check_lengths(correct=acc, lengths=n)
    span = n.max() - n.min()
    lam = 0.5 - (n - n.min()) / span if span > 0 else np.zeros_like(n)
    return acc + np.where(acc, lam, np.minimum(0.0, lam))


def overlong_penalty(lengths: Any, max_len: int, cache_len: int) -> np.ndarray:
    """DAPO soft overlong punishment, added on top of another reward.

    0 up to max_len - cache_len, then a linear ramp down to -1 at max_len, -1 beyond.
    """
    if not 0 < cache_len <= max_len:
        raise ValueError(f"need 0 < cache_len <= max_len, got {cache_len=}, {max_len=}")
    n = np.asarray(lengths, dtype=np.float64)
    soft = max_len - cache_len
    return np.where(n <= soft, 0.0, np.where(n <= max_len, (soft - n) / cache_len, -1.0))


def _field(cfg: Any, name: str, default: Any = None) -> Any:
    if isinstance(cfg, Mapping):
        return cfg.get(name, default)
    return getattr(cfg, name, default)


def group_rewards(kind: str, correct: Any, formatted: Any, steps: Any, lengths: Any,
                  cfg: Any) -> np.ndarray:
    """Rewards of one group for the method `kind` (one of KINDS).

    `cfg` is any object or mapping with `alpha`, `beta`, and optionally `overlong` (bool; adds
    DAPO's overlong penalty with `overlong_max_len`, `overlong_cache_len`).
    """
    alpha, beta = _field(cfg, "alpha", 0.9), _field(cfg, "beta", 0.5)
    if kind == "step_grpo":
        rewards = step_aware_rewards(correct, formatted, steps, alpha, beta, "correct")
    elif kind == "step_grpo_all_mu":
        rewards = step_aware_rewards(correct, formatted, steps, alpha, beta, "all")
    elif kind == "no_step":
        rewards = accuracy_format_rewards(correct, formatted, alpha)
    elif kind == "grpo":
        rewards = accuracy_rewards(correct)
    elif kind == "grpo_lp":
        rewards = length_penalty_rewards(correct, lengths)
    else:
        raise ValueError(f"unknown reward kind {kind!r}; expected one of {KINDS}")
    if _field(cfg, "overlong", False):
        rewards = rewards + overlong_penalty(lengths, _field(cfg, "overlong_max_len"),
                                             _field(cfg, "overlong_cache_len"))
    return rewards


def score_completions(texts: Sequence[str], golds: Sequence[str], lengths: Any, group_size: int,
                      kind: str, cfg: Any, grader: Grader,
                      triggers: Sequence[str] = ("Wait",)) -> tuple[np.ndarray, dict[str, Any]]:
    """Extract -> grade -> count steps -> group rewards, for completions laid out group by group.

    `golds` holds one reference answer per completion, or one per group (repeated G times here).
    `lengths` are response token counts (used by grpo_lp and the overlong penalty). Returns the
    rewards [N] and info: `correct`, `formatted`, `steps` arrays and the `grader_timeouts` count.
    """
    n = len(texts)
    if group_size < 1 or n % group_size:
        raise ValueError(f"{n} completions do not split into groups of {group_size}")
    if len(golds) == n // group_size:
        golds = [g for g in golds for _ in range(group_size)]
    elif len(golds) != n:
        raise ValueError(f"{len(golds)} golds for {n} completions in groups of {group_size}")
    lengths = np.asarray(lengths)
    if lengths.shape != (n,):
        raise ValueError(f"lengths must have shape ({n},), got {lengths.shape}")
    preds = [extract_boxed(t) for t in texts]
    formatted = np.array([p is not None for p in preds], dtype=bool)
    graded = grader.grade(golds, preds)
    steps = np.array([count_steps(t, triggers) for t in texts], dtype=np.int32)
    rewards = np.concatenate([
        group_rewards(kind, graded.correct[s], formatted[s], steps[s], lengths[s], cfg)
        for s in (slice(g, g + group_size) for g in range(0, n, group_size))
    ])
    info = {"correct": graded.correct, "formatted": formatted, "steps": steps,
            "grader_timeouts": graded.timeouts}
    return rewards, info
