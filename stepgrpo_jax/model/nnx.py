"""The decoder as a Flax NNX module, for code that composes it with Flax (or adds LoRA).

The functional core (`qwen3.py`) stays the hot path: the module holds exactly its params, each an
`nnx.Param` carrying its logical axes as `out_sharding` (the names `parallel.py` maps to the
mesh), and calls `qwen3.forward` on them.

    m = Decoder(cfg, rngs=nnx.Rngs(params=0))       # or Decoder(cfg, params=params)
    graphdef, state = nnx.split(m)
    nnx.to_pure_dict(state)                          # == the params pytree of qwen3.py
    nnx.get_partition_spec(state)                    # == param_axes(cfg), as PartitionSpecs
    logits = m(input_ids, attention_mask)            # == qwen3.forward(cfg, params, ...)
"""

from __future__ import annotations

import jax
from flax import nnx

from stepgrpo_jax.model import qwen3
from stepgrpo_jax.model.config import ModelConfig


class Decoder(nnx.Module):
    """Qwen3, Qwen2 or Llama decoder (by `cfg`) with the params of `qwen3.param_specs` as
    attributes: `embed_tokens`, `layers` (a dict, layers stacked on the leading axis), `norm`
    and, untied, `lm_head`."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs | None = None,
                 params: qwen3.Params | None = None):
        """From `params`, or drawn as `qwen3.init_params` draws them from `rngs.params()`."""
        if (rngs is None) == (params is None):
            raise ValueError("Decoder: give exactly one of rngs and params")
        self.cfg = cfg
        if params is None:
            params = qwen3.init_params(cfg, rngs.params())
        # Eager sharding off: placing the values is the caller's (jit out_shardings, as for
        # the functional params), not the constructor's.
        variables = jax.tree.map(
            lambda spec, value: nnx.Param(value, out_sharding=spec.axes, eager_sharding=False),
            qwen3.param_specs(cfg), params, is_leaf=lambda x: isinstance(x, qwen3.ParamSpec))
        for name, value in variables.items():
            setattr(self, name, nnx.data(value))

    @property
    def params(self) -> qwen3.Params:
        """The params pytree of the functional core (arrays, no Variables)."""
        return nnx.to_pure_dict(nnx.state(self, nnx.Param))

    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None,
                 positions: jax.Array | None = None, cache: qwen3.KVCache | None = None):
        """`qwen3.forward` of this module's params: float32 logits [B, T, V], and with a cache
        `(logits, new_cache)`."""
        return qwen3.forward(self.cfg, self.params, input_ids, attention_mask, positions, cache)
