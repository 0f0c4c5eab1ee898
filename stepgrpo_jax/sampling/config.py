"""Sampler settings: frozen, hashable dataclasses (they are static arguments of the jitted loop)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import jax.numpy as jnp

if TYPE_CHECKING:  # Importing transformers costs seconds; only its type is used here.
    from transformers import PreTrainedTokenizerBase

# How thinking ended (SPEC §3): `length` means the response budget ran out while still thinking.
EXIT_REASONS = ("natural", "early_exit", "budget", "eos", "length")

# SPEC §3's strings, defined here only (configs and the testbed import them).
PROBE_PROMPT = "\n**Final Answer**\n\\boxed"
EXIT_SUFFIX = "\n</think>\n\n"
NATURAL_SUFFIX = "\n\n"  # Appended after the model's own `</think>`.


@dataclasses.dataclass(frozen=True)
class DTRConfig:
    """Dynamic Truncated Rollout (SPEC §3). Token sequences are ids of the sampling tokenizer;
    `from_tokenizer` encodes the default strings."""

    probe_ids: tuple[int, ...]
    exit_ids: tuple[int, ...]
    natural_ids: tuple[int, ...]
    threshold: float = 0.95  # Early exit when the probe's confidence is strictly above this.
    probe_budget: int = 20  # Greedy probe tokens at most; a probe must close `</think>` within.
    max_probes: int = 10  # Then the completion runs free.
    think_budget_frac: float = 0.9  # Thinking budget, as a fraction of max_new_tokens.
    exit_margin: int = 50  # A probe this close to the thinking budget always exits.

    def __post_init__(self):
        if not (self.probe_ids and self.exit_ids):
            raise ValueError("DTRConfig: probe_ids and exit_ids must not be empty")
        if self.probe_budget < 1 or self.max_probes < 0 or not 0 < self.think_budget_frac <= 1:
            raise ValueError(f"DTRConfig: probe_budget={self.probe_budget} must be >= 1, "
                             f"max_probes={self.max_probes} >= 0, think_budget_frac="
                             f"{self.think_budget_frac} in (0, 1]")

    @classmethod
    def from_tokenizer(cls, tok: PreTrainedTokenizerBase, probe_prompt: str = PROBE_PROMPT,
                       exit_suffix: str = EXIT_SUFFIX, natural_suffix: str = NATURAL_SUFFIX,
                       **numbers) -> DTRConfig:
        def encode(text: str) -> tuple[int, ...]:
            return tuple(tok.encode(text, add_special_tokens=False))

        return cls(encode(probe_prompt), encode(exit_suffix), encode(natural_suffix), **numbers)

    @classmethod
    def from_config(cls, dtr: Mapping[str, Any], tok: PreTrainedTokenizerBase) -> DTRConfig:
        """From a `config.dtr` section: its fields named like this class's, and the strings."""
        return cls.from_tokenizer(tok, dtr["probe_prompt"], dtr["exit_suffix"],
                                  **_same_names(cls, dtr))


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
    """What to sample. Defaults are Qwen3's token ids and SPEC §3's training settings."""

    max_new_tokens: int = 16384  # The response budget R (appended tokens included).
    # Prompts are right-padded to the smallest bucket that fits: one compile per bucket.
    prompt_buckets: tuple[int, ...] = (128, 256, 512, 1024, 2048)
    temperature: float = 1.0  # 0 is greedy.
    top_p: float = 1.0  # 1 switches nucleus filtering off.
    top_k: int = 0  # 0 switches top-k filtering off.
    cache_dtype: str = "bfloat16"
    eos_ids: tuple[int, ...] = (151645,)  # <|im_end|>: stays in the completion.
    think_end_id: int = 151668  # </think>
    pad_id: int = 0  # Fills completion slots past a row's length.
    dtr: DTRConfig | None = None  # None: plain sampling (steps are still counted).

    def __post_init__(self):
        if self.max_new_tokens < 1 or not self.prompt_buckets:
            raise ValueError(f"max_new_tokens={self.max_new_tokens} must be >= 1 and "
                             f"prompt_buckets={self.prompt_buckets} non-empty")
        if self.temperature < 0 or not 0 < self.top_p <= 1 or self.top_k < 0:
            raise ValueError(f"temperature={self.temperature} must be >= 0, top_p={self.top_p} "
                             f"in (0, 1], top_k={self.top_k} >= 0")
        jnp.dtype(self.cache_dtype)  # Fails early on a bad name.

    @classmethod
    def from_config(cls, config: Mapping[str, Any], tok: PreTrainedTokenizerBase, *,
                    evaluation: bool = False) -> SamplerConfig:
        """The rollout sampler of `config.sampling` and `config.dtr`, or with `evaluation` the
        plain sampler of `config.eval` (its fields override `config.sampling`'s; with
        `eval.exit_after_first_step`, thinking closes at the first step boundary); token ids
        from `tok`, stop ids from `tokenizer.stop_ids`."""
        from stepgrpo_jax import tokenizer  # Imports transformers: only when building.

        fields = {**config["sampling"], **(config["eval"] if evaluation else {})}
        dtr = None
        if config["dtr"]["enabled"] and not evaluation:
            dtr = DTRConfig.from_config(config["dtr"], tok)
        elif evaluation and config["eval"]["exit_after_first_step"]:
            # DTR forcing the exit at the first step boundary: a threshold below any confidence
            # (they lie in [0, 1]) makes the first probe exit, after one probe token. No
            # thinking budget: a response with no trigger thinks as in plain sampling.
            dtr = DTRConfig.from_tokenizer(tok, config["dtr"]["probe_prompt"],
                                           config["dtr"]["exit_suffix"], threshold=-1.0,
                                           probe_budget=1, max_probes=1, think_budget_frac=1.0)
        return cls(**_same_names(cls, fields), eos_ids=tokenizer.stop_ids(tok, config["model_dir"]),
                   think_end_id=tok.convert_tokens_to_ids("</think>"), pad_id=tok.pad_token_id,
                   dtr=dtr)

    @property
    def think_budget(self) -> int:
        return int(self.dtr.think_budget_frac * self.max_new_tokens) if self.dtr else 0

    def bucket(self, prompt_len: int) -> int:
        """The padded prompt length of a batch whose longest prompt has `prompt_len` tokens."""
        fits = [b for b in sorted(self.prompt_buckets) if b >= prompt_len]
        if not fits:
            raise ValueError(f"prompt of {prompt_len} tokens is longer than the largest bucket "
                             f"{max(self.prompt_buckets)} (SamplerConfig.prompt_buckets)")
        return fits[0]


def _same_names(cls, section: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of a config section named like fields of dataclass `cls` (sequences as
    tuples, so the dataclass stays hashable)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: tuple(v) if isinstance(v, list | tuple) else v
            for k, v in section.items() if k in names}
