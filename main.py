"""Step-GRPO training, supervised warm start or evaluation, by config.

  python main.py --config configs/demo.py --workdir /tmp/demo
  python main.py --config configs/step_grpo.py:size=8b,platform=v5p-64 --workdir gs://... \
      --config.optim.learning_rate=2e-6
"""

from absl import app, flags, logging
from ml_collections import config_flags

from stepgrpo_jax import parallel

CONFIG = config_flags.DEFINE_config_file("config", "configs/demo.py", "Experiment config file.",
                                         lock_config=True)
WORKDIR = flags.DEFINE_string("workdir", "workdir", "Checkpoints, metrics and results go here.")
COORDINATOR = flags.DEFINE_string("coordinator", None,
                                  "host:port of process 0, for multi-process runs without a "
                                  "cluster manager (TPU pods and SLURM are detected).")
NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the job.")
PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")


def _unknown_override(config, argv: list[str]) -> str | None:
    """The first `--config.a.b=v` of argv whose key the config lacks, with the valid keys."""
    for arg in argv:
        if not arg.startswith("--config."):
            continue
        path = arg.removeprefix("--config.").split("=", 1)[0].split(".")
        node = config
        for i, key in enumerate(path):
            if not hasattr(node, "keys") or key not in node:
                where = ".".join(["config", *path[:i]])
                valid = sorted(node.keys()) if hasattr(node, "keys") else []
                return f"unknown override --{where}.{key}; valid keys of {where}: {valid}"
            node = node[key]
    return None


def _load_config(argv: list[str]):
    """The config file named on the command line, parsed without its overrides."""
    path = CONFIG.default
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            path = arg.split("=", 1)[1]
        elif arg == "--config" and i + 1 < len(argv):
            path = argv[i + 1]
    return flags.FLAGS["config"].parser.parse(path)


def parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing with a clear error for a mistyped config override."""
    try:
        return flags.FLAGS(argv)
    except (AttributeError, KeyError, flags.Error) as e:
        message = _unknown_override(_load_config(argv), argv)
        if message:
            raise SystemExit(f"FATAL: {message}") from None
        raise SystemExit(f"FATAL: {e}") from None


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    parallel.init_distributed(COORDINATOR.value, NUM_PROCESSES.value, PROCESS_ID.value)
    config = CONFIG.value
    logging.info("config:\n%s", config)
    from stepgrpo_jax import experiment  # After jax.distributed: see run().

    with parallel.logical_rules(experiment.mesh_rules(config)):
        run(config, WORKDIR.value)


def run(config, workdir: str) -> None:
    # Imported here so that jax.distributed starts before anything touches the devices.
    if config.mode == "eval":
        from stepgrpo_jax import evaluate

        evaluate.run(config, workdir)
    elif config.mode in ("grpo", "sft"):
        from stepgrpo_jax import trainer

        trainer.train(config, workdir)
    elif config.mode == "demo":
        from stepgrpo_jax import demo

        demo.run(config, workdir)
    else:
        raise app.UsageError(f"--config.mode={config.mode!r}; expected grpo, sft, eval or demo")


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
