r"""Compiles a config's three hot programs for a TPU slice on this CPU, and says if they fit.

  pip install -e ".[tpu]"
  python tools/aot_compile.py --config configs/step_grpo.py:size=8b,platform=v5p-64 \
      --topology v5p-64 [--json out.json] [--programs update] [--set grpo.num_microbatches=10]

The TPU compiler (libtpu) runs on a CPU: `get_topology_desc` gives the slice's devices without
owning them, and the programs are lowered from abstract inputs (ShapeDtypeStructs carrying their
shardings) at the config's real shapes, through the trainer's own factories:
  rollout   the sampler, `sampling.batch_size` rows per host, the largest prompt bucket,
            `max_new_tokens` and DTR as configured;
  logprobs  the old/reference log-prob pass over a whole rollout batch;
  update    one optimiser update on a mini-batch, with the configured micro-batches and remat.
Per program and device it prints the compiler's bytes (arguments, outputs, temporaries), the
arrays of the loop that stay resident meanwhile (train state, reference params, the rollout
batch), their total against the chip's HBM, the FLOPs and a roofline time (`model_costs`).
GPU nodes cannot be compiled for without a GPU:
  --topology 8xh100 (or 8xh200) estimates one on this CPU: the same shapes and shardings over 8
            abstract TPU v5p chips, so params, optimizer, reference, batches and KV cache are
            exact and the activations are XLA:TPU's plan, judged against the GPU's memory;
  --topology local  compiles for this machine's own devices with their own compiler (XLA:GPU
            on a GPU node, with JAX_PLATFORMS=cuda): tools/gpu_bench.sh checks the GPU setups so.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import dataclasses
import importlib.util
import json
import math
import os
import sys
import time

# Compiling needs no TPU: the CPU backend runs the host side, and no libtpu lock is taken (another
# process on this machine may have loaded libtpu).
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.experimental import topologies  # noqa: E402

from stepgrpo_jax import (  # noqa: E402
    checkpoint,
    grpo,
    model,
    parallel,
    sampling,
    tokenizer,
    train_state,
    trainer,
)
from stepgrpo_jax.sampling import decode  # noqa: E402

GB = 1e9
PROGRAMS = ("rollout", "logprobs", "update")
HEADROOM = 0.10  # A program fits when its total leaves this fraction of HBM free.


@dataclasses.dataclass(frozen=True)
class Chip:
    """Per-chip numbers (dense bf16 peak). TPU: cloud.google.com/tpu/docs/{v4,v5e,v5p,v6e};
    GPU: NVIDIA's H100 SXM and H200 SXM datasheets."""

    kind: str
    hbm: float  # bytes
    flops: float  # peak bf16 FLOP/s
    bandwidth: float  # HBM bytes/s
    cores_in_name: int = 1  # v4-N and v5p-N count TensorCores (2 per chip); v5e/v6e count chips.
    dims: int = 2  # Torus dimensions of the slice.


CHIPS = {
    "v4": Chip("TPU v4", 32 * 2**30, 275e12, 1200e9, cores_in_name=2, dims=3),
    "v5e": Chip("TPU v5e", 16e9, 197e12, 819e9),
    "v5p": Chip("TPU v5p", 95e9, 459e12, 2765e9, cores_in_name=2, dims=3),
    "v6e": Chip("TPU v6e", 32e9, 918e12, 1640e9),
    "h100": Chip("H100 SXM", 80e9, 989e12, 3350e9),
    "h200": Chip("H200 SXM", 141e9, 989e12, 4800e9),
}
# Slice shapes by chip count (Cloud TPU docs' tables).
SHAPES_3D = {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4", 128: "4x4x8",
             256: "4x8x8", 512: "8x8x8", 1024: "8x8x16", 2048: "8x16x16", 4096: "16x16x16"}
SHAPES_2D = {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16",
             256: "16x16"}


@dataclasses.dataclass(frozen=True)
class Topology:
    name: str
    chip: Chip
    devices: tuple
    hosts: int  # Processes of the job: `sampling.batch_size` is per host.
    compiler: str  # Whose plan the numbers are, e.g. "XLA:TPU on 8 x TPU v5p (H100 SXM proxy)".


def get_topology(name: str) -> Topology:
    """`v5p-64`, `v6e-32`, `v5e-16`, `v4-8` (Cloud TPU accelerator types), `v5p:2x2x1`
    (family:shape), `8xh100` / `8xh200` (a GPU node, estimated on 8 TPU v5p chips) or `local`
    (this machine's devices, H100 or H200 GPUs).

    Raises ValueError for an unknown name or size, or local devices with no entry in CHIPS."""
    if name in ("8xh100", "8xh200"):
        proxy = get_topology("v5p:2x2x2")
        return Topology(name, CHIPS[name[2:]], proxy.devices, hosts=1,
                        compiler=f"XLA:TPU on {len(proxy.devices)} x TPU v5p, as a proxy")
    if name == "local":
        devices = jax.devices()
        kind = devices[0].device_kind  # e.g. "NVIDIA H100 80GB HBM3"
        chip = next((CHIPS[k] for k in ("h100", "h200") if k in kind.lower()), None)
        if chip is None:
            raise ValueError(f"--topology local: no chip entry for {kind!r} (H100 and H200 "
                             f"are known; TPU slices go by name, e.g. v5p-64)")
        return Topology(name, chip, tuple(devices), jax.process_count(),
                        compiler=f"XLA:{devices[0].platform.upper()}")
    family, sep, size = name.replace(":", "-", 1).partition("-")
    family = {"v5litepod": "v5e", "v5": "v5p"}.get(family, family)
    if family not in CHIPS or not sep or family.startswith("h"):
        raise ValueError(f"--topology {name!r}; expected e.g. v5p-64, v6e-32, v5e-16, v4-8, "
                         f"v5p:2x2x1 or 8xh100 (families: v4, v5e, v5p, v6e)")
    chip = CHIPS[family]
    shapes = SHAPES_3D if chip.dims == 3 else SHAPES_2D
    if ":" in name:
        shape = size
    else:
        chips = int(size) // chip.cores_in_name if size.isdigit() else 0
        if chips not in shapes:
            sizes = [n * chip.cores_in_name for n in shapes]
            raise ValueError(f"--topology {name!r}: {family} slices are {family}-N with N in "
                             f"{sizes}")
        shape = shapes[chips]
    dims = ([int(d) for d in shape.split("x")] + [1])[:3]
    # A host drives a 2x2 block of chips (v5e/v6e-8 slices: one host with all 8).
    per_host = (2, 4, 1) if chip.dims == 2 and math.prod(dims) == 8 else (2, 2, 1)
    # Wrap-around links: v4/v5p slices of 4x4x4 and up are tori; v5e/v6e along a side of 16.
    wrap = [min(dims) >= 4] * 3 if chip.dims == 3 else [d == 16 for d in dims[:2]] + [False]
    devices = topologies.get_topology_desc(
        platform="tpu", topology_name=f"{family}:{shape}",
        chip_config_name="megacore" if chip.cores_in_name == 2 else "default",
        chips_per_host_bounds=tuple(min(p, d) for p, d in zip(per_host, dims, strict=True)),
        num_slices=1, wrap=tuple(wrap)).devices
    return Topology(name, chip, tuple(devices), len({d.process_index for d in devices}),
                    compiler="XLA:TPU")


# ----------------------------------------------------------------------------------- programs

def device_bytes(tree) -> int:
    """Bytes one device holds of a tree of sharded ShapeDtypeStructs."""
    return sum(math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize
               for x in jax.tree.leaves(tree))


def rows_batch(rows: int, prompt_len: int, response_len: int, sharding, logprobs: tuple[str, ...]):
    """The abstract update batch (`trainer.build_batch`'s layout plus the log-prob columns)."""
    one = trainer.build_batch([[1]], [np.ones(1, np.int32)], [np.ones(1)], np.zeros(1),
                              prompt_len, response_len, 0)
    batch = {k: jax.ShapeDtypeStruct((rows, *v.shape[1:]), v.dtype, sharding=sharding)
             for k, v in one.items()}
    for key in logprobs:
        batch[key] = jax.ShapeDtypeStruct((rows, prompt_len + response_len), jnp.float32,
                                          sharding=sharding)
    return batch


@dataclasses.dataclass(frozen=True)
class Run:
    """A config's abstract run on a topology: its mesh, model, state and batches."""

    config: ml_collections.ConfigDict
    topo: Topology
    mesh: jax.sharding.Mesh
    model_cfg: model.ModelConfig
    optimizer: optax.GradientTransformation
    state: train_state.TrainState  # ShapeDtypeStructs with their shardings, as the batches.
    rollout_batch: dict  # A whole rollout step's rows with their log-probs.
    minibatch: dict  # One update's rows.

    @classmethod
    def build(cls, config: ml_collections.ConfigDict, topo: Topology) -> Run:
        mesh = parallel.make_mesh(tuple(config.mesh.shape), topo.devices)
        shape_config = config.copy_and_resolve_references()
        shape_config.model_dir = ""  # Shapes from the preset: nothing is loaded.
        model_cfg, _ = checkpoint.initial_model(shape_config, mesh)
        optimizer = train_state.optimizer_from_config(
            config.optim, config.total_steps * config.grpo.num_minibatches)
        state = checkpoint.abstract(jax.eval_shape(lambda p: train_state.TrainState(
            p, optimizer.init(p), jnp.zeros((), jnp.int32)), model.abstract_params(model_cfg)),
            train_state.state_shardings(model_cfg, optimizer, mesh))
        g, kl = config.grpo, config.grpo.kl_coef > 0
        logprob_keys = ("old_logprobs",) + (("ref_logprobs",) if kl else ())
        shape = (max(config.sampling.prompt_buckets), config.sampling.max_new_tokens,
                 train_state.batch_sharding(mesh), logprob_keys)
        rows = g.prompts_per_step * g.group_size
        return cls(config, topo, mesh, model_cfg, optimizer, state, rows_batch(rows, *shape),
                   rows_batch(rows // g.num_minibatches, *shape))

    @property
    def ref_bytes(self) -> int:
        """The frozen reference params: a copy of the state's (kl_coef > 0 only)."""
        return device_bytes(self.state.params) if self.config.grpo.kl_coef > 0 else 0

    def program(self, name: str) -> tuple[jax.stages.Lowered, int, dict, dict]:
        """(lowered program, bytes per device that the loop holds outside it meanwhile, what
        the device holds during it by kind, the shapes that `model_costs` needs)."""
        c, g, mesh, state = self.config, self.config.grpo, self.mesh, self.state
        prompt_len = max(c.sampling.prompt_buckets)
        shapes = dict(model=self.model_cfg, devices=len(self.topo.devices), tensor=mesh.shape[
            "tensor"], prompt_len=prompt_len, response_len=c.sampling.max_new_tokens)
        params, opt = device_bytes(state.params), device_bytes(state.opt_state)
        held = dict(params=params, optimizer=opt, reference=self.ref_bytes)
        if name == "rollout":
            tok = tokenizer.load(c.tokenizer_dir or c.model_dir or
                                 tokenizer.cached_qwen3_tokenizer())
            tables = sampling.TriggerTables.from_tokenizer(tok, tuple(c.dtr.triggers),
                                                           self.model_cfg.vocab_size)
            sampler = sampling.Sampler(self.model_cfg, sampling.SamplerConfig.from_config(c, tok),
                                       tables, mesh)
            rows = c.sampling.batch_size * self.topo.hosts
            slots = decode.num_slots(sampler.scfg, prompt_len)
            steps = decode.max_steps(sampler.scfg, tables)
            cache = jax.eval_shape(lambda: model.init_cache(self.model_cfg, rows, slots,
                                                            jnp.dtype(c.sampling.cache_dtype)))
            cache = checkpoint.abstract(cache, jax.tree.map(
                lambda x: parallel.named_sharding(mesh, model.KVCache.AXES, x.shape), cache))
            rng = jax.ShapeDtypeStruct((), jax.eval_shape(jax.random.key, 0).dtype,
                                       sharding=jax.sharding.NamedSharding(mesh, jax.P()))
            # The sampler reads the state's params; the optimiser state and reference stay.
            return (sampler.lower(state.params, rows, prompt_len, rng),
                    device_bytes(state) - params + self.ref_bytes,
                    dict(held, kv_cache=device_bytes(cache)),
                    dict(shapes, kind=name, rows=rows, budget=(slots, steps)))
        if name == "logprobs":
            fn = train_state.make_compute_logprobs(
                self.model_cfg, mesh, chunk_size=g.chunk_size,
                num_microbatches=g.num_minibatches * g.num_microbatches)
            batch = {k: self.rollout_batch[k] for k in ("input_ids", "attention_mask",
                                                        "loss_mask")}
            # The reference pass, the larger one: the whole state stays, old log-probs too.
            resident = device_bytes(state) + device_bytes(self.rollout_batch["old_logprobs"])
            return (fn.lower(state.params, batch), resident,
                    dict(held, batches=resident - device_bytes(state) + device_bytes(batch)),
                    dict(shapes, kind=name, rows=batch["input_ids"].shape[0]))
        if name == "update":
            fn = grpo.make_update_step(
                self.model_cfg, grpo.LossConfig.from_config(c), self.optimizer, mesh,
                num_microbatches=g.num_microbatches, chunk_size=g.chunk_size)
            # The rollout batch and its K mini-batches (`split_minibatches`) stay meanwhile.
            batches = 2 * device_bytes(self.rollout_batch)
            return (fn.lower(state, self.minibatch),
                    self.ref_bytes + batches - device_bytes(self.minibatch),
                    dict(held, batches=batches),
                    dict(shapes, kind=name, rows=self.minibatch["input_ids"].shape[0],
                         microbatches=g.num_microbatches, remat=self.model_cfg.remat))
        raise ValueError(f"program {name!r}; expected one of {PROGRAMS}")


def model_costs(s: dict, chip: Chip) -> dict:
    """FLOPs, HBM bytes and roofline seconds per device of a program, counted from its shapes.

    XLA's cost analysis counts each loop body once (a layer of the scan, a micro-batch, a decode
    step), so the whole program is counted here: a forward pass costs 2 FLOPs per matmul weight
    per token, causal attention 4*N*H*T*S/2 per layer, the LM head 2*D*V per scored token; the
    backward costs twice the forward and remat recomputes the forward once more. Bytes are the
    weights read per pass (gathered, in param_dtype) and, for decoding, the KV cache read per
    step. The roofline time max(FLOPs / peak, bytes / bandwidth) ignores collectives.
    """
    cfg, n = s["model"], s["devices"]
    D, F, N, K, H, L, V = (cfg.embed_dim, cfg.mlp_dim, cfg.num_heads, cfg.num_kv_heads,
                           cfg.head_dim, cfg.num_layers, cfg.vocab_size)
    layer = 2 * L * (D * (N + 2 * K) * H + N * H * D + 3 * D * F)  # FLOPs per token, forward
    head = 2 * D * V
    weights = model.num_params(cfg) * jnp.dtype(cfg.param_dtype).itemsize / s["tensor"]
    rows, P = s["rows"], s["prompt_len"]
    if s["kind"] == "rollout":
        slots, steps = s["budget"]
        prefill = rows * P * layer + rows * 2 * L * N * H * P * P + rows * head
        step_flops = rows * (layer + head + 4 * L * N * H * slots)
        kv = rows * slots * K * H * 2 * 2 * L / (n / s["tensor"]) / s["tensor"]
        step_seconds = max(step_flops / n / chip.flops, (weights + kv) / chip.bandwidth)
        return dict(flops=(prefill + steps * step_flops) / n, bytes=steps * (weights + kv),
                    seconds=prefill / n / chip.flops + steps * step_seconds)
    T = P + s["response_len"]
    forward = rows * T * (layer + head) + rows * 2 * L * N * H * T * T
    passes = 1 if s["kind"] == "logprobs" else (4 if s["remat"] != "none" else 3)
    micro = s.get("microbatches", 1)
    flops, nbytes = passes * forward / n, passes * micro * weights
    return dict(flops=flops, bytes=nbytes, seconds=max(flops / chip.flops,
                                                       nbytes / chip.bandwidth))


def compile_program(run: Run, name: str) -> dict:
    """Compiles one program; its memory (bytes per device), FLOPs, roofline and compile time."""
    chip = run.topo.chip
    t0 = time.perf_counter()
    lowered, resident, held, shapes = run.program(name)
    compiled = lowered.compile()
    seconds = time.perf_counter() - t0
    m = compiled.memory_analysis()
    parts = dict(arguments=m.argument_size_in_bytes, outputs=m.output_size_in_bytes,
                 temporaries=m.temp_size_in_bytes, aliased=m.alias_size_in_bytes)
    peak = parts["arguments"] + parts["outputs"] + parts["temporaries"] - parts["aliased"]
    total = peak + resident
    cost = compiled.cost_analysis() or {}
    if isinstance(cost, list):  # Older jax: one dict per program.
        cost = cost[0]
    model_cost = model_costs(shapes, chip)
    # XLA:TPU holds the arguments, the outputs and one block of temporaries at once: their sum
    # (less donated buffers) is the program's footprint. The compiler's own liveness peak
    # (`compiler_peak`) can be lower, as it does not count the block as a whole.
    # What the total holds; "activations" is the rest: activations, gathered weights, the
    # gradient accumulator, logits, XLA's scratch.
    split = dict(held, activations=total - sum(held.values()))
    return dict(program=name, **parts, peak=peak, compiler_peak=m.peak_memory_in_bytes,
                resident=resident, total=total, split=split,
                hbm=chip.hbm, fits=total <= (1 - HEADROOM) * chip.hbm,
                xla_flops=cost.get("flops", 0.0), xla_bytes=cost.get("bytes accessed", 0.0),
                **model_cost, compile_seconds=seconds)


def print_row(r: dict) -> None:
    print(f"{r['program']:9s} args {r['arguments'] / GB:6.2f}  out {r['outputs'] / GB:6.2f}  "
          f"temp {r['temporaries'] / GB:6.2f}  alias {r['aliased'] / GB:6.2f}  "
          f"= peak {r['peak'] / GB:6.2f} GB; + resident {r['resident'] / GB:5.2f} = "
          f"{r['total'] / GB:6.2f} / {r['hbm'] / GB:.1f} GB HBM "
          f"({100 * r['total'] / r['hbm']:.0f}%) {'fits' if r['fits'] else 'DOES NOT FIT'}")
    print(f"{'':9s} of which " + ", ".join(f"{k} {v / GB:.2f}" for k, v in r["split"].items()))
    print(f"{'':9s} FLOPs/device: XLA {r['xla_flops']:.3g} (loop bodies once), model "
          f"{r['flops']:.3g} (x{r['flops'] / max(r['xla_flops'], 1):.0f}); bytes: XLA "
          f"{r['xla_bytes']:.3g}, model {r['bytes']:.3g}; roofline {r['seconds']:.1f} s; "
          f"compiled in {r['compile_seconds']:.0f} s")


def load_config(spec: str, overrides: list[str]):
    """`configs/x.py:arg` with `FIELD=VALUE` overrides (values parsed as Python literals)."""
    # Config files import `configs.*` from the repository root, as under main.py.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    path, _, arg = spec.partition(":")
    module_spec = importlib.util.spec_from_file_location("aot_config", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    config = module.get_config(arg) if arg else module.get_config()
    for item in overrides:
        key, _, value = item.partition("=")
        with contextlib.suppress(ValueError, SyntaxError):  # Else a plain string.
            value = ast.literal_eval(value)
        node = config
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        if leaf not in node:
            raise SystemExit(f"--set {item}: no field {key} in {spec}")
        node[leaf] = type(node[leaf])(value) if isinstance(node[leaf], tuple) else value
    return config


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="configs/X.py[:args]")
    parser.add_argument("--topology", required=True,
                        help="e.g. v5p-64, v6e-32, v5p:2x2x1, 8xh100, local")
    parser.add_argument("--programs", default=",".join(PROGRAMS))
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a config field, e.g. grpo.num_microbatches=10")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    config = load_config(args.config, args.set)
    topo = get_topology(args.topology)
    print(f"{args.config} on {topo.name}: {len(topo.devices)} x {topo.chip.kind} "
          f"({topo.hosts} hosts), mesh {tuple(config.mesh.shape)}; compiled by "
          f"{topo.compiler}")
    with parallel.logical_rules(config.mesh.rules):
        run = Run.build(config, topo)
        results = []
        for name in args.programs.split(","):
            results.append(compile_program(run, name))
            print_row(results[-1])
    step = step_seconds(config, topo, {r["program"]: r["seconds"] for r in results})
    if step:
        print("step (roofline, every row to the full budget): " +
              " + ".join(f"{n} x {name} {sec:.0f} s" for name, (n, sec) in step.items()) +
              f" = {sum(n * sec for n, sec in step.values()) / 60:.0f} min")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(config=args.config, topology=args.topology,
                           compiler=topo.compiler, results=results, step=step), f, indent=1)
    return results


def step_seconds(config, topo: Topology, seconds: dict[str, float]) -> dict:
    """program -> (runs per rollout step, roofline seconds of one), once all three compiled:
    the sampler runs over this host's rows in calls of `sampling.batch_size`, log-probs run
    for the old and (kl_coef > 0) the reference params, and K mini-batch updates follow."""
    if set(seconds) != set(PROGRAMS):
        return {}
    g = config.grpo
    calls = -(-g.prompts_per_step * g.group_size // topo.hosts // config.sampling.batch_size)
    runs = dict(rollout=calls, logprobs=2 if g.kl_coef > 0 else 1, update=g.num_minibatches)
    return {name: (runs[name], seconds[name]) for name in PROGRAMS}


if __name__ == "__main__":
    main()
