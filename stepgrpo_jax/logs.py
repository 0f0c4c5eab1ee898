"""What the libraries may print: `main.py` and every command-line tool call `quiet_logs` first."""

import logging as std_logging

from absl import logging


class _DropCustomDataConfig(std_logging.Filter):
    """TFDS warns that every prepared set of local files has a "custom data configuration":
    always true here (the config names the files' fingerprint), so not worth a person's eye."""

    def filter(self, record: std_logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Using custom data configuration")


def quiet_logs(level: str = "warning") -> None:
    """Only `level` and above from every library (absl: ours, Orbax, TFDS; Python logging)."""
    logging.set_verbosity(level)
    std_logging.getLogger().setLevel(level.upper())
    if level not in ("debug", "info"):
        logging.get_absl_logger().addFilter(_DropCustomDataConfig())
