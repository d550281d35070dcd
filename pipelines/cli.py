"""The stages' shared command line: `python -m pipelines.<stage> <model key>`."""

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from contract.catalog import ModelSpec, UnknownModelError, get_spec
from contract.paths import ROOT
from pipelines.log import configure, finish

log = logging.getLogger("pipelines")


class StageError(RuntimeError):
    """A failure the user can act on: the message says what and where, no traceback needed."""


def run_stage(
    name: str, work: Callable[[ModelSpec, Path], object], argv: list[str] | None = None
) -> None:
    """Parse the model key, run one stage for it, turn known failures into a clear exit 2."""
    parser = argparse.ArgumentParser(prog=f"python -m pipelines.{name}")
    parser.add_argument("model", help="catalog key (params.yaml models:)")
    parser.add_argument("--root", type=Path, default=ROOT, help="project root (default: this repo)")
    args = parser.parse_args(argv)
    configure()
    from pipelines.schema import SchemaViolation
    from pipelines.sources import MissingSourceError

    try:
        spec = get_spec(args.model, args.root / "params.yaml")
        work(spec, args.root)
    except (UnknownModelError, MissingSourceError, SchemaViolation, StageError) as exc:
        log.error("%s %s failed: %s", name, args.model, exc)
        sys.exit(2)
    finish()
