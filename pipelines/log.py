"""Logging for the stages: one line per event, to stderr, with the stage's model key."""

import logging
import os
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
    for noisy in ("alembic", "mlflow.store", "urllib3", "matplotlib", "skl2onnx", "feast"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def finish() -> None:
    """Exit now, skipping interpreter teardown: the stage's work is done and its files are
    closed by then, and native thread pools do not survive that teardown cleanly.

    - Arrow (pandas' parquet): a reader's thread still alive while Arrow's globals are
      destroyed aborts the process ("terminate called without an active exception", exit
      -6) after a finished stage, now and then (apache/arrow#34314): once in CI, in
      snapshot@penguins, failing the whole `dvc repro`.
    - DuckDB (Feast's offline store): its nanobind bindings report ~100 "leaked" objects at
      teardown on every exit, a wall of text in every `dvc repro`.
    """
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
