"""The rollout sampler: compiled decoding with in-graph step counting and DTR (SPEC §2-§3).

    tables = sampling.TriggerTables.from_tokenizer(tok, ("Wait",), cfg.vocab_size)
    scfg = sampling.SamplerConfig(max_new_tokens=..., dtr=sampling.DTRConfig.from_tokenizer(tok))
    out = sampling.Sampler(cfg, scfg, tables, mesh)(params, prompt_ids, rng)
"""

from stepgrpo_jax.sampling.config import EXIT_REASONS, DTRConfig, SamplerConfig
from stepgrpo_jax.sampling.sampler import SampleOutput, Sampler, concat
from stepgrpo_jax.sampling.steps import TriggerTables

__all__ = ["EXIT_REASONS", "DTRConfig", "SampleOutput", "Sampler", "SamplerConfig",
           "TriggerTables", "concat"]
