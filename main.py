"""Step-GRPO training, supervised warm start, evaluation or the demo, by `config.mode`.

  python main.py --config configs/demo.py --workdir /tmp/demo
  python main.py --config configs/step_grpo.py:size=8b,platform=v5p-64 --workdir gs://... \
      --config.optim.learning_rate=2e-6
"""

import os
import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from stepgrpo_jax import logs, parallel

CONFIG = config_flags.DEFINE_config_file("config", "configs/demo.py", "Experiment config file.",
                                         lock_config=True)
WORKDIR = flags.DEFINE_string("workdir", "workdir", "Checkpoints, metrics and results go here.")
COORDINATOR = flags.DEFINE_string("coordinator", None,
                                  "host:port of process 0, for multi-process runs without a "
                                  "cluster manager (TPU pods and SLURM are detected).")
NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the job.")
PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")
LOG_LEVEL = flags.DEFINE_enum("log_level", "warning", ["debug", "info", "warning", "error"],
                              "Logs of this level and above go to stderr; 'info' brings back the "
                              "libraries' progress logs (Orbax, TFDS) and the config.")


def parse_flags(argv: list[str]) -> list[str]:
    """absl's parsing; a mistyped `--config.a.b` ends with ml_collections' own "Did you mean"
    message rather than a traceback."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:  # A bad value: absl's message names the flag.
        sys.exit(f"FATAL: {e}")
    except (AttributeError, KeyError) as e:
        while e.args and isinstance(e.args[0], BaseException):  # AttributeError(KeyError(msg))
            e = e.args[0]
        sys.exit(f"FATAL: no such config field {e.args[0] if e.args else e}")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    logs.quiet_logs(LOG_LEVEL.value)
    parallel.init_distributed(COORDINATOR.value, NUM_PROCESSES.value, PROCESS_ID.value)
    config = CONFIG.value
    logging.info("config:\n%s", config)
    if jax.process_index() == 0:  # The record of the run, instead of a dump to the terminal.
        try:
            os.makedirs(WORKDIR.value, exist_ok=True)
            with open(os.path.join(WORKDIR.value, "config.json"), "w") as f:
                f.write(config.to_json_best_effort(indent=2))
        except OSError as e:
            sys.exit(f"FATAL: workdir {WORKDIR.value} is not writable: {e}")
    # Imported after jax.distributed has started, before anything touches the devices.
    from stepgrpo_jax import demo, evaluate, sft, trainer

    modes = {"grpo": trainer.train, "sft": sft.train, "eval": evaluate.run, "demo": demo.run}
    if config.mode not in modes:
        raise app.UsageError(f"--config.mode={config.mode!r}; expected one of {list(modes)}")
    with parallel.logical_rules(config.mesh.rules):
        modes[config.mode](config, WORKDIR.value)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
