"""Ahead-of-time compilation for a TPU slice on this CPU (tools/aot_compile.py, libtpu).

A small model's update step is compiled for a 4-chip v5p slice; the compiler's bytes must add
up to the run's parts and scale with the batch and the sharding as they should. XLA:TPU pads
arrays to its (8, 128) tiles, so the model's dimensions are multiples of those (which keeps
padding under 2%) and byte counts are compared to 2%.
"""

import functools

import fixtures
import jax
import pytest

from configs import step_grpo
from stepgrpo_jax import parallel

# One worker compiles them all: `_compile` caches the three programs in its process.
pytestmark = pytest.mark.xdist_group("aot")


@pytest.fixture(scope="module")
def aot():
    # Executables for abstract TPU devices cannot be loaded back from the persistent
    # compilation cache the tests share (conftest.py): none is written to it.
    min_seconds = jax.config.jax_persistent_cache_min_compile_time_secs
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1e9)
    yield fixtures.load_tool("aot_compile")
    jax.config.update("jax_persistent_cache_min_compile_time_secs", min_seconds)


@pytest.fixture(scope="module")
def topo(aot):
    return aot.get_topology("v5p:2x2x1")


def _compile(aot, topo, mesh=(1, -1, 1), prompts=16):
    """The run and the compiled update of a 4M-parameter model: [rows, 256 tokens] batches,
    compiled once per (mesh, prompts) in this process."""
    return _compile_once(aot, topo, mesh, prompts)


@functools.cache
def _compile_once(aot, topo, mesh, prompts):
    c = step_grpo.get_config("runlocal")
    c.model.overrides.update(vocab_size=4096, embed_dim=256, mlp_dim=512, num_heads=8,
                             num_kv_heads=8, head_dim=128)
    c.sampling.prompt_buckets, c.sampling.max_new_tokens = (128,), 128
    c.grpo.group_size, c.grpo.prompts_per_step = 2, prompts
    c.grpo.num_minibatches = c.grpo.num_microbatches = 1
    c.mesh.shape = mesh
    with parallel.logical_rules(None):
        run = aot.Run.build(c, topo)
        return run, aot.compile_program(run, "update")


def test_topologies_by_name(aot):
    for name, chips, hosts, kind in [("v5p-64", 32, 8, "TPU v5p"), ("v4-8", 4, 1, "TPU v4"),
                                     ("v5e-16", 16, 4, "TPU v5e"), ("v6e-8", 8, 1, "TPU v6e"),
                                     ("v6e-32", 32, 8, "TPU v6e")]:
        t = aot.get_topology(name)
        assert (len(t.devices), t.hosts, t.chip.kind) == (chips, hosts, kind), name
    with pytest.raises(ValueError, match="v5p slices are v5p-N with N in"):
        aot.get_topology("v5p-6")
    with pytest.raises(ValueError, match="--topology local: no chip entry for 'cpu'"):
        aot.get_topology("local")  # This machine's CPU has no HBM to plan for.


def test_peak_is_the_sum_of_the_state_and_batch(aot, topo):
    run, r = _compile(aot, topo)
    state, batch = aot.device_bytes(run.state), aot.device_bytes(run.minibatch)
    assert r["arguments"] == pytest.approx(state + batch, rel=0.02)
    assert r["aliased"] == pytest.approx(state, rel=0.02)  # The donated state, updated in place.
    assert r["outputs"] == pytest.approx(state, rel=0.02)  # The new state and scalar metrics.
    assert r["peak"] == r["arguments"] + r["outputs"] + r["temporaries"] - r["aliased"]
    assert r["total"] == r["peak"] + r["resident"]
    assert r["fits"]


def test_doubling_the_batch_doubles_the_activations(aot, topo):
    _, small = _compile(aot, topo, prompts=16)
    _, large = _compile(aot, topo, prompts=32)
    assert 1.7 < large["temporaries"] / small["temporaries"] < 2.3
    assert large["flops"] == pytest.approx(2 * small["flops"], rel=1e-6)
    assert 1.8 < large["xla_flops"] / small["xla_flops"] < 2.2


def test_fsdp_divides_the_params(aot, topo):
    replicated, r_rep = _compile(aot, topo, mesh=(-1, 1, 1))
    sharded, r_fsdp = _compile(aot, topo, mesh=(1, -1, 1))
    ratio = aot.device_bytes(replicated.state) / aot.device_bytes(sharded.state)
    assert 3.99 < ratio <= 4  # Only the norm scales stay whole.
    # The batch is split over data x fsdp in both: only the state changed.
    assert r_rep["arguments"] / r_fsdp["arguments"] == pytest.approx(ratio, rel=0.02)


def test_a_gpu_node_is_estimated_on_eight_tpu_chips(aot):
    """8xh100: the same shapes and shardings over 8 TPU chips, judged against an H100's memory."""
    gpu, tpu = aot.get_topology("8xh100"), aot.get_topology("v5p:2x2x2")
    assert (len(gpu.devices), gpu.hosts, gpu.chip.hbm) == (8, 1, 80e9)
    assert "proxy" in gpu.compiler and "proxy" not in tpu.compiler
    gpu_run, on_gpu = _compile(aot, gpu)
    with parallel.logical_rules(None):  # Lowering is cheap; one compile is enough.
        tpu_run = aot.Run.build(gpu_run.config, tpu)
        on_tpu = tpu_run.program("update")
        lowered = gpu_run.program("update")
    assert lowered[0].as_text() == on_tpu[0].as_text()  # The same program,
    assert lowered[1:3] == on_tpu[1:3]  # holding the same state and batches,
    assert (on_gpu["hbm"], on_gpu["fits"]) == (80e9, on_gpu["total"] <= 0.9 * 80e9)  # for 80 GB.
