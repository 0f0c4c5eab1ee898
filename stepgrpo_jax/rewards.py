"""Rewards: step counting and the group rewards (SPEC §2 text rule, §4).

Everything here is host-side Python/NumPy. The trainer calls `score_completions` once per rollout
step with the decoded completions laid out group after group; answers are extracted and graded by
`grading` (a pool of worker processes that survives across steps).
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from stepgrpo_jax import grading

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


@dataclasses.dataclass(frozen=True)
class RewardConfig:
    """The reward of one method (SPEC §4); fields named like `config.reward`'s."""

    kind: str = "step_grpo"  # One of KINDS.
    alpha: float = 0.9  # Weight of accuracy vs format.
    beta: float = 0.5  # Strength of the step bonus / penalty.
    overlong: bool = False  # Adds DAPO's soft overlong punishment.
    overlong_cache_len: int = 4096  # Its soft band below overlong_max_len.
    overlong_max_len: int | None = None  # Its hard limit: the response budget.
    grader_timeout_s: float = 5.0  # A slower answer counts as wrong (and is counted).
    grader_workers: int = 2  # Grader processes (grading.Grader).

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown reward kind {self.kind!r}; expected one of {KINDS}")
        if self.grader_timeout_s <= 0 or self.grader_workers < 1:
            raise ValueError("need grader_timeout_s > 0 and grader_workers >= 1, got "
                             f"{self.grader_timeout_s} and {self.grader_workers}")
        if self.overlong and not 0 < self.overlong_cache_len <= (self.overlong_max_len or 0):
            raise ValueError("overlong needs 0 < overlong_cache_len <= overlong_max_len, got "
                             f"{self.overlong_cache_len} and {self.overlong_max_len}")

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> RewardConfig:
        """From `config.reward`; the overlong limit is the response budget
        `config.sampling.max_new_tokens`."""
        r = config["reward"]
        return cls(kind=r["kind"], alpha=r["alpha"], beta=r["beta"], overlong=r["overlong"],
                   overlong_cache_len=r["overlong_cache_len"],
                   overlong_max_len=config["sampling"]["max_new_tokens"],
                   grader_timeout_s=r["grader_timeout_s"], grader_workers=r["grader_workers"])


def group_rewards(cfg: RewardConfig, correct: Any, formatted: Any, steps: Any,
                  lengths: Any) -> np.ndarray:
    """Rewards of one group for the method `cfg.kind`, plus the overlong penalty if enabled."""
    if cfg.kind == "step_grpo":
        rewards = step_aware_rewards(correct, formatted, steps, cfg.alpha, cfg.beta, "correct")
    elif cfg.kind == "step_grpo_all_mu":
        rewards = step_aware_rewards(correct, formatted, steps, cfg.alpha, cfg.beta, "all")
    elif cfg.kind == "no_step":
        rewards = accuracy_format_rewards(correct, formatted, cfg.alpha)
    elif cfg.kind == "grpo":
        rewards = accuracy_rewards(correct)
    else:  # grpo_lp (RewardConfig checks the kind)
        rewards = length_penalty_rewards(correct, lengths)
    if cfg.overlong:
        rewards = rewards + overlong_penalty(lengths, cfg.overlong_max_len,
                                             cfg.overlong_cache_len)
    return rewards


def score_completions(texts: Sequence[str], golds: Sequence[str], lengths: Any, group_size: int,
                      cfg: RewardConfig, grader: grading.Grader,
                      triggers: Sequence[str] = ("Wait",)) -> tuple[np.ndarray, dict[str, Any]]:
    """Extract -> grade -> count steps -> group rewards, for completions laid out group by group.

    `golds` holds one reference answer per completion, or one per group (repeated G times here).
    `lengths` are response token counts (used by grpo_lp and the overlong penalty). Returns the
    rewards [N] and info: `correct`, `formatted`, `steps` arrays and the `grader_timeouts` count.
    A completion whose thinking never closed has no answer: acc = fmt = 0.
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
    boxes = [grading.answer_boxes(t) for t in texts]
    formatted = np.array([bool(b) for b in boxes], dtype=bool)
    graded = grader.grade(golds, boxes)
    steps = np.array([count_steps(t, triggers) for t in texts], dtype=np.int32)
    rewards = np.concatenate([
        group_rewards(cfg, graded.correct[s], formatted[s], steps[s], lengths[s])
        for s in (slice(g, g + group_size) for g in range(0, n, group_size))
    ])
    info = {"correct": graded.correct, "formatted": formatted, "steps": steps,
            "grader_timeouts": graded.timeouts}
    return rewards, info
