"""Step-GRPO post-training of Qwen3 reasoning models in JAX."""
