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
    """Exit now when DuckDB was loaded (Feast's offline store), skipping interpreter teardown.

    DuckDB's nanobind bindings report ~100 "leaked" objects at teardown on every exit
    (harmless, but a wall of text in every `dvc repro`); the stage's work is done and its
    files are closed by then.
    """
    if "duckdb" in sys.modules:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
