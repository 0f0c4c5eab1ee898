"""Rollouts: compiled decoding with in-graph step counting and DTR (SPEC §2-§3).

    tables = sampling.TriggerTables.from_tokenizer(tok, ("Wait",), cfg.vocab_size)
    scfg = sampling.SamplerConfig(max_new_tokens=..., dtr=sampling.DTRConfig.from_tokenizer(tok))
    out = sampling.Engine(cfg, scfg, tables, num_rows=64, mesh=mesh).rollout(params, prompts,
                                                                            G, rng)
    out = sampling.Sampler(cfg, scfg, tables, mesh)(params, prompt_per_row, rng)  # static
"""

from stepgrpo_jax.sampling.config import EXIT_REASONS, DTRConfig, SamplerConfig
from stepgrpo_jax.sampling.decode import SampleOutput, concat
from stepgrpo_jax.sampling.engine import Engine, make_sampler
from stepgrpo_jax.sampling.sampler import Sampler
from stepgrpo_jax.sampling.steps import TriggerTables

__all__ = ["EXIT_REASONS", "DTRConfig", "Engine", "SampleOutput", "Sampler", "SamplerConfig",
           "TriggerTables", "concat", "make_sampler"]
