"""Logging for the stages: one line per event, to stderr, with the stage's model key."""

import logging
import sys


def get_logger(name: str) -> logging.Logger:
    return logging.getLogger(name)


def configure(level: int = logging.INFO) -> None:
    """Called by each stage's main(); never at import time."""
    logging.basicConfig(
        stream=sys.stderr,
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,
    )
    for noisy in ("alembic", "mlflow.store", "urllib3", "matplotlib", "skl2onnx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
