"""The deploy tier's slow start, on a thread of its own.

When collection selects the tier, its tests move to the end of the run and the engine start
and the image builds begin at once, beside the other tiers (with the build cache that is
seconds; from nothing, a few minutes of mostly downloads). The first `up` (the DVC remote
seeded with the host tiers' runs, the trainer's reduced `dvc repro --pull`, the 20-odd
containers starting) waits until the tier's own fixtures ask for it. It ran beside the other
tiers once, measured in CI: 20 containers and the local stack's 20 processes starting at once
on two cores left the compose proxy unhealthy and the local stack unready after 10 minutes,
and both `dvc repro` runs took twice as long; on two cores it gains nothing. Alone (`make
compose-test`) the fixtures wait at once (for the reduced workspace first), as before.

The fixtures own the teardown (`down -v` when the module ends, the engine when the package
ends); a session that ends before they run (a failure with -x, ^C) cancels the start and
tears down what it made at pytest's exit.
"""

import contextlib
import os
import shutil
import subprocess
import tempfile
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

from tests.deploy import engine as docker
from tests.deploy.images import build_all
from tests.deploy.stack import ComposeStack, reduced_params

KEEP = os.environ.get("DEPLOY_KEEP_STACK") == "1"


class Terminal:
    """Lines on pytest's terminal from any thread while pytest captures the tests' output: a
    copy of the descriptor made while collection had it (pytest points descriptor 1 at its
    capture file during each test and fixture)."""

    def __init__(self) -> None:
        self.fd = os.dup(1)
        self.lock = threading.Lock()

    def __call__(self, line: str) -> None:
        with self.lock:
            os.write(self.fd, f"\n[deploy {time.strftime('%H:%M:%S')}] {line}\n".encode())

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)


@dataclass
class Start:
    """The engine, the images and the stack after its first `up`, each a future; the `up`
    begins when `go` is set (`wanted()`)."""

    say: Terminal
    folder: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="compose-")))
    cancelled: threading.Event = field(default_factory=threading.Event)
    go: threading.Event = field(default_factory=threading.Event)
    seed_cache: Path | None = None  # the host tiers' DVC cache, given with `go`
    engine: "Future[docker.Engine]" = field(default_factory=Future)
    builds: "Future[dict[str, float]]" = field(default_factory=Future)
    stack: "Future[ComposeStack]" = field(default_factory=Future)
    thread: threading.Thread | None = None
    made: ComposeStack | None = None  # from before its `up`: a cancelled `up` still goes down
    stack_closed: bool = False
    engine_closed: bool = False

    def begin(self) -> "Start":
        self.thread = threading.Thread(target=self._run, name="deploy-start", daemon=True)
        self.thread.start()
        return self

    def _run(self) -> None:
        try:
            engine = docker.start(self.say)
            self.engine.set_result(engine)
            self.builds.set_result(build_all(engine, self.say))
            self.go.wait()  # set by the tier's first test, or by finish()
            if self.cancelled.is_set():
                raise RuntimeError("cancelled: pytest ended before the deploy tier ran")
            log = self.folder / "compose.log"
            stack = ComposeStack(engine, reduced_params(self.folder), log, self.say, self.cancelled)
            self.made = stack
            stack.down("--volumes", "--remove-orphans")  # a killed session's leftovers
            if self.seed_cache is not None:
                self.say(stack.seed_remote(self.seed_cache))
            stack.first_up_s = stack.up()
            self.say(f"first up: {stack.first_up_s:.0f} s (log {log})")
            try:
                self.say(stack.trainer_timeline(stack.first_up_s))
            except (RuntimeError, ValueError, KeyError, subprocess.TimeoutExpired) as error:
                self.say(f"the trainer's timeline is unreadable: {error!r}")
            self.stack.set_result(stack)
        except BaseException as error:  # handed to whoever waits, and told at once
            self.say(f"the start failed: {str(error).strip()[-2000:] or repr(error)}")
            for future in (self.engine, self.builds, self.stack):
                if not future.done():
                    future.set_exception(error)

    def wanted(self, seed_cache: Path) -> "Future[ComposeStack]":
        """The tier's tests have begun: the first `up` may start (once the builds are done),
        its DVC remote seeded from `seed_cache` (tests/deploy/seed.py)."""
        self.seed_cache = seed_cache
        self.go.set()
        return self.stack

    def close_stack(self) -> None:
        """The last lines of every service into the log, then `down -v` (once)."""
        if self.stack_closed or self.made is None:
            return
        self.stack_closed = True
        try:
            self.made.compose("logs", "--no-color", "--tail", "200", timeout=120)
        finally:
            if not KEEP:
                self.made.down("--volumes", "--remove-orphans")

    def close_engine(self) -> None:
        if self.engine_closed or not self.engine.done() or self.engine.exception():
            return
        self.engine_closed = True
        if not KEEP:
            self.engine.result().stop()

    def finish(self) -> None:
        """pytest's exit: cancel what is still starting, tear down what the fixtures left."""
        self.cancelled.set()
        self.go.set()  # a start still waiting for its tests ends now
        if self.thread is not None:
            self.thread.join(timeout=900)  # a build under way finishes first
        try:
            self.close_stack()
        finally:
            self.close_engine()
            self.say.close()
            if not KEEP:
                shutil.rmtree(self.folder, ignore_errors=True)
