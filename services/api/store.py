"""Models by alias from the MLflow registry, kept locally with their checksums.

A service that has loaded a version once can restart and serve it while the registry is
down. Bytes that do not match their checksum are never loaded: not a download that differs
from the registry's `onnx_sha256` tag, not a cached copy that changed on disk.

Some models serve files beside the graph (a search's FAISS index and documents): the
register stage logs them as the MLflow model's extra files with a `sha256.<name>` tag each,
and they are checked and cached like the graph.
"""

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("services.api.store")
MODEL_FILE = "model.onnx"
FILE_TAG_PREFIX = "sha256."  # one version tag per file served beside the graph
# A registered model's routing between champion and challenger, when a controller sets it
# (services/drift/canary.py): experiment.mode (off, split, shadow), experiment.share
EXPERIMENT_TAG_PREFIX = "experiment."
EXTRA_FILES_DIR = "extra_files"  # where MLflow's log_model(extra_files=...) puts them


class RegistryUnavailable(RuntimeError):
    """The registry could not be asked (down, unreachable, misconfigured)."""


class ArtifactRefused(RuntimeError):
    """Bytes that must not be served: corrupted, or not what the registry registered."""


@dataclass(frozen=True)
class Artifact:
    """One model version on local disk, checked against its checksum."""

    model: str
    alias: str
    version: str
    sha256: str
    path: Path
    metrics: dict[str, float]
    source: str  # "registry" or "cache": where this start got it from
    registered_at: float = 0.0  # unix time the version was registered (0: unknown)
    files: tuple[tuple[str, str], ...] = ()  # (name, sha256) of files served beside the graph

    @property
    def directory(self) -> Path:
        """The version's folder: the graph and the files served beside it."""
        return self.path.parent

    def manifest(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "alias": self.alias,
            "version": self.version,
            "sha256": self.sha256,
            "files": dict(self.files),
            "metrics": self.metrics,
            "registered_at": self.registered_at,
            "saved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(2**20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# A checksum computed by this process stands while the file's inode, size, modification and
# change times stay as they were, for an hour at most: the registry poll asks every minute
# whether the cached version is intact, and hashing a search's 86 MB graph again took ~60 ms
# of the CPU that serves requests (a request during it took twice as long). As git does for
# "racily clean" files, a file changed less than SETTLE_S before it was hashed is hashed
# again: a rewrite within one tick of the filesystem's clock would keep its times
RECHECK_S, SETTLE_S = 3600.0, 1.0


class Checksums:
    """sha256 of files, remembered by their stat until they change (or RECHECK_S pass)."""

    def __init__(
        self, recheck_s: float = RECHECK_S, clock: Callable[[], float] = time.time
    ) -> None:
        self.recheck_s, self.clock = recheck_s, clock
        self._known: dict[Path, tuple[tuple[int, int, int, int], float, str]] = {}

    def __call__(self, path: Path) -> str:
        st = path.stat()
        key = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        known, now = self._known.get(path), self.clock()
        if known is not None and known[0] == key and now - known[1] < self.recheck_s:
            return known[2]
        digest = sha256_of(path)
        if len(self._known) >= 256:  # versions come and go: forget the old ones now and then
            self._known.clear()
        if now - max(st.st_mtime_ns, st.st_ctime_ns) / 1e9 > SETTLE_S:
            self._known[path] = (key, now, digest)
        else:  # changed just now: a change within the same clock tick would keep the times
            self._known.pop(path, None)
        return digest

    def mismatched(self, folder: Path, files: tuple[tuple[str, str], ...]) -> list[str]:
        """The files beside the graph that are missing or differ from their checksums."""
        return [
            name
            for name, checksum in files
            if not (folder / name).exists() or self(folder / name) != checksum
        ]


class ModelStore:
    """Resolve `models:/<name>@<alias>`, download once, serve from the local copy."""

    def __init__(self, tracking_uri: str, cache_dir: Path, timeout_s: float = 5.0) -> None:
        self.tracking_uri = tracking_uri
        self.cache_dir = cache_dir
        self.checksums = Checksums()  # of the cached copies, checked at every fetch
        # An unreachable server must fail in seconds, not after MLflow's minutes of retries
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(int(max(1, timeout_s))))
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        import mlflow

        # MLflow 3 resolves logged models through its global URIs, whatever a client was given
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(tracking_uri)

    def _client(self) -> Any:
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)

    def _resolve(self, model: str, alias: str) -> Any | None:
        """The registry's version record for the alias; None when the alias is not set."""
        from mlflow.exceptions import MlflowException

        try:
            return self._client().get_model_version_by_alias(model, alias)
        except MlflowException as exc:
            if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                return None
            raise RegistryUnavailable(f"{type(exc).__name__}: {exc.message}") from exc
        except Exception as exc:  # connection refused, DNS, timeouts: all mean "not now"
            raise RegistryUnavailable(f"{type(exc).__name__}: {exc}") from exc

    def experiment(self, model: str) -> dict[str, str]:
        """The registered model's `experiment.*` tags (mode, share: what a canary controller
        set), without the prefix; RegistryUnavailable when the registry cannot say."""
        from mlflow.exceptions import MlflowException

        try:
            tags = self._client().get_registered_model(model).tags or {}
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                return {}
            raise RegistryUnavailable(f"{type(exc).__name__}: {exc.message}") from exc
        except Exception as exc:  # connection refused, DNS, timeouts
            raise RegistryUnavailable(f"{type(exc).__name__}: {exc}") from exc
        prefix = EXPERIMENT_TAG_PREFIX
        return {k.removeprefix(prefix): v for k, v in tags.items() if k.startswith(prefix)}

    def _metrics(self, run_id: str) -> dict[str, float]:
        try:
            return dict(self._client().get_run(run_id).data.metrics)
        except Exception as exc:  # the metrics are informative; their absence is not fatal
            log.warning("could not read the training metrics of run %s: %s", run_id, exc)
            return {}

    def fetch(self, model: str, alias: str) -> Artifact | None:
        """The alias's version, from the registry or (when it is down) the local copy."""
        try:
            record = self._resolve(model, alias)
        except RegistryUnavailable as exc:
            log.warning(
                "registry unreachable (%s); trying the local copy of %s@%s", exc, model, alias
            )
            cached = self.cached(model, alias)
            if cached is None and alias == "champion":
                raise RegistryUnavailable(
                    f"registry unreachable ({exc}) and no local copy of {model}@{alias}"
                ) from exc
            return cached
        if record is None:
            return None
        version = str(record.version)
        tags = record.tags or {}
        expected = tags.get("onnx_sha256", "")
        files = tuple(
            sorted(
                (tag.removeprefix(FILE_TAG_PREFIX), value)
                for tag, value in tags.items()
                if tag.startswith(FILE_TAG_PREFIX)
            )
        )
        path = self.cache_dir / model / f"v{version}" / MODEL_FILE
        if (
            path.exists()
            and expected
            and self.checksums(path) == expected
            and not self.checksums.mismatched(path.parent, files)
        ):
            log.info("%s@%s: version %s already cached", model, alias, version)
        else:
            if path.exists():
                log.warning(
                    "%s: cached version %s does not match its checksum; downloading again",
                    model,
                    version,
                )
            self._download(model, version, path, expected, files)
        artifact = Artifact(
            model,
            alias,
            version,
            expected or self.checksums(path),
            path,
            self._metrics(record.run_id),
            "registry",
            (record.creation_timestamp or 0) / 1000,
            files,
        )
        self._write_manifest(artifact)
        return artifact

    def _download(
        self,
        model: str,
        version: str,
        path: Path,
        expected: str,
        files: tuple[tuple[str, str], ...] = (),
    ) -> None:
        import mlflow.artifacts

        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
            try:
                location = self._client().get_model_version_download_uri(model, version)
                local = mlflow.artifacts.download_artifacts(
                    artifact_uri=location,
                    dst_path=tmp,
                    tracking_uri=self.tracking_uri,
                )
            except Exception as exc:
                raise RegistryUnavailable(f"download of {model} v{version} failed: {exc}") from exc
            downloaded = Path(local) / MODEL_FILE
            if not downloaded.exists():
                raise ArtifactRefused(f"{model} v{version} has no {MODEL_FILE}: not an ONNX model")
            actual = sha256_of(downloaded)
            if not expected:
                log.warning(
                    "%s v%s was registered without an onnx_sha256 tag; trusting the download (%s)",
                    model,
                    version,
                    actual[:12],
                )
            elif actual != expected:
                raise ArtifactRefused(
                    f"refusing {model} v{version}: the downloaded {MODEL_FILE} has sha256 "
                    f"{actual[:12]}... but the registry's onnx_sha256 tag says {expected[:12]}..."
                )
            extras = Path(local) / EXTRA_FILES_DIR
            for name, checksum in files:
                extra = extras / name
                if not extra.exists():
                    raise ArtifactRefused(
                        f"refusing {model} v{version}: the registry lists {name} beside the "
                        "graph, but the download has no such file"
                    )
                actual = sha256_of(extra)
                if actual != checksum:
                    raise ArtifactRefused(
                        f"refusing {model} v{version}: the downloaded {name} has sha256 "
                        f"{actual[:12]}... but the registry's {FILE_TAG_PREFIX}{name} tag says "
                        f"{checksum[:12]}..."
                    )
            for name, _ in files:  # the graph last: its presence means a complete version
                os.replace(extras / name, path.parent / name)
            os.replace(downloaded, path)
        log.info("%s v%s downloaded to %s", model, version, path)

    def _manifest_path(self, model: str, alias: str) -> Path:
        return self.cache_dir / model / f"{alias}.json"

    def _write_manifest(self, artifact: Artifact) -> None:
        target = self._manifest_path(artifact.model, artifact.alias)
        tmp = target.with_suffix(".tmp")
        tmp.write_text(json.dumps(artifact.manifest(), indent=2) + "\n")
        os.replace(tmp, target)

    def cached(self, model: str, alias: str) -> Artifact | None:
        """The local copy the alias pointed to when the registry was last reachable."""
        manifest_path = self._manifest_path(model, alias)
        if not manifest_path.exists():
            return None
        manifest = json.loads(manifest_path.read_text())
        path = self.cache_dir / model / f"v{manifest['version']}" / MODEL_FILE
        if not path.exists():
            raise ArtifactRefused(f"refusing the local copy of {model}@{alias}: {path} is missing")
        actual = self.checksums(path)
        if actual != manifest["sha256"]:
            raise ArtifactRefused(
                f"refusing the local copy of {model} v{manifest['version']}: {path} has sha256 "
                f"{actual[:12]}... but was saved as {manifest['sha256'][:12]}... (corrupted)"
            )
        files = tuple(sorted(manifest.get("files", {}).items()))
        bad = self.checksums.mismatched(path.parent, files)
        if bad:
            raise ArtifactRefused(
                f"refusing the local copy of {model} v{manifest['version']}: {bad} "
                "missing or changed since it was saved (corrupted)"
            )
        log.info("%s@%s: serving the local copy of version %s", model, alias, manifest["version"])
        return Artifact(
            model,
            alias,
            str(manifest["version"]),
            actual,
            path,
            manifest.get("metrics", {}),
            "cache",
            manifest.get("registered_at", 0.0),
            files,
        )

    def clear(self, model: str) -> None:
        shutil.rmtree(self.cache_dir / model, ignore_errors=True)
