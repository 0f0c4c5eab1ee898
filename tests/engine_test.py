"""The rollout engine equals the static sampler token for token, refills rows, and compiles once."""

import dataclasses

import chex
import jax
import numpy as np
import pytest
from sampling_fixtures import DTR_CFG, DTR_PARAMS, DTR_TABLES, TINY, random_prompts

from stepgrpo_jax import model, parallel, sampling
from stepgrpo_jax.sampling import decode
from stepgrpo_jax.sampling import engine as engine_lib

FIELDS = ("tokens", "forced", "lengths", "step_counts", "num_probes", "exit_reasons",
          "think_end")
SAMPLED = dict(temperature=1.0, top_k=20)


def assert_same_completions(got: sampling.SampleOutput, want: sampling.SampleOutput):
    for field in FIELDS:
        np.testing.assert_array_equal(getattr(got, field), getattr(want, field), field)
    np.testing.assert_allclose(got.logprobs, want.logprobs, atol=1e-4)


@pytest.mark.parametrize("dtr", [True, False], ids=["dtr", "plain"])
@pytest.mark.parametrize("sampled", [False, True], ids=["greedy", "sampled"])
@pytest.mark.parametrize("mesh_shape", [None, (2, 2, 2)], ids=["1dev", "8dev"])
def test_engine_equals_static_sampler(dtr, sampled, mesh_shape):
    """30 requests (10 prompts x 3) on 4 rows: every row is refilled several times."""
    scfg = dataclasses.replace(DTR_CFG, **(SAMPLED if sampled else {}),
                               dtr=DTR_CFG.dtr if dtr else None)
    prompts, G, rng = random_prompts(3, 10), 3, jax.random.key(5)
    params, mesh = DTR_PARAMS, None
    if mesh_shape:
        mesh = parallel.make_mesh(mesh_shape)
        params = jax.device_put(params, parallel.tree_shardings(mesh, model.param_axes(TINY),
                                                                params))
    want = sampling.Sampler(TINY, scfg, DTR_TABLES)(
        DTR_PARAMS, [p for p in prompts for _ in range(G)], rng)
    engine = sampling.Engine(TINY, scfg, DTR_TABLES, num_rows=4, mesh=mesh)
    got = engine.rollout(params, prompts, G, rng)
    assert_same_completions(got, want)
    assert len(set(want.lengths.tolist())) > 3  # Rows finish at different times.
    reasons = [want.exit_reason(i) for i in range(30)]
    if dtr:  # Probes fired, exited early and were put back.
        assert {"early_exit", "budget", "natural", "eos"} <= set(reasons)
        assert want.num_probes.sum() > reasons.count("early_exit") + reasons.count("budget")
    if sampled:  # Samples of one prompt differ: each request has its own stream.
        tokens = want.tokens.reshape(10, G, -1)
        assert sum(len({t.tobytes() for t in group}) > 1 for group in tokens) >= 5
    # The engine decodes the sum of the lengths in fewer row-iterations than the static batch.
    assert got.occupancy > want.occupancy
    assert got.prefill_tokens * G == want.prefill_tokens


def test_completions_do_not_depend_on_the_pool(monkeypatch):
    """Pool sizes 1, 3 and 8 (more rows than requests) give the same completions, and so do
    static calls of 4 rows (the last one padded). A progress bar changes nothing and counts
    every completion."""
    bars, progress_bar = [], decode.progress_bar

    def recorded_bar(total, enabled):
        bars.append((progress_bar(total, enabled), enabled))
        return bars[-1][0]

    monkeypatch.setattr(decode, "progress_bar", recorded_bar)
    scfg = dataclasses.replace(DTR_CFG, **SAMPLED)
    prompts, rng = random_prompts(3, 3), jax.random.key(1)
    outs = [sampling.Engine(TINY, scfg, DTR_TABLES, num_rows=b).rollout(
        DTR_PARAMS, prompts, 2, rng, progress=b == 3) for b in (1, 3, 8)]
    static = sampling.Sampler(TINY, scfg, DTR_TABLES, rows=4)
    outs.append(static.rollout(DTR_PARAMS, prompts, 2, rng, progress=True))
    for out in outs[1:]:
        assert_same_completions(out, outs[0])
    shown = [(bar.n, bar.total) for bar, enabled in bars if enabled]
    assert shown == [(6, 6), (6, 6)] and len(bars) == 4


def test_nothing_recompiles_after_warm_up(monkeypatch):
    """A second rollout (other prompts in the same bucket, another key) traces nothing."""
    for name in ("_segment", "_insert", "_prefill", "_start"):
        monkeypatch.setattr(engine_lib, name,
                            chex.assert_max_traces(getattr(engine_lib, name), n=1))
    engine = sampling.Engine(TINY, DTR_CFG, DTR_TABLES, num_rows=4)
    for seed in (0, 1):
        engine.rollout(DTR_PARAMS, random_prompts(seed, 6), 2, jax.random.key(seed))


def test_bad_requests():
    engine = sampling.Engine(TINY, DTR_CFG, DTR_TABLES, num_rows=2)
    with pytest.raises(ValueError, match="at least one token"):
        engine.rollout(DTR_PARAMS, [[3], []], 2, jax.random.key(0))
    with pytest.raises(ValueError, match="largest bucket 16"):
        engine.rollout(DTR_PARAMS, [list(range(3, 30))], 2, jax.random.key(0))
    with pytest.raises(ValueError, match="num_rows=0"):
        sampling.Engine(TINY, DTR_CFG, DTR_TABLES, num_rows=0)
