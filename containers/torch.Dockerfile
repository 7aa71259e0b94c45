# syntax=docker/dockerfile:1
# irflow "torch" container family: every rule that runs a neural model (encode_corpus,
# dense_retrieve, rerank_bi_encoder, rerank_cross_encoder, and the training rules to come).
# Python 3.11 + the full envs/requirements.lock (torch 2.13.0, transformers, ...) + the irflow
# package (non-editable).
#
# CPU OR GPU: this Dockerfile builds a CPU image unless TORCH_INDEX_URL says otherwise. Its
# default, https://download.pytorch.org/whl/cpu, serves torch 2.13.0+cpu. For GPU hosts use
# containers/torch-cuda.Dockerfile (build.py torch-cuda): PyPI's CUDA torch with every nvidia-*
# and triton package pinned by hash in envs/requirements-cuda.lock. Another PyTorch index here
# (e.g. a CUDA 12 one for older drivers) leaves those packages unpinned: freeze such an image
# (`pip freeze`) into a lock of its own before relying on it for results.
# TORCH_INDEX_URL="" uses only the default index and local wheels (build.py --wheelhouse).
#
# Build it with containers/build.py (it sets the label arguments and tags
# localhost/irflow-torch:<version> and :<git-short-sha>), or by hand from the repository root:
#
#   docker build -f containers/torch.Dockerfile -t localhost/irflow-torch:0.1.0 \
#       --build-arg VCS_REF="$(git rev-parse HEAD)" \
#       --build-arg LOCK_SHA256="$(sha256sum envs/requirements.lock | cut -d' ' -f1)" .
#
# containers/README.md: building, pinning, SIFs, running the workflow with --sdm apptainer.

# Base: as in containers/eval.Dockerfile (the Docker Official Image python:3.11-slim-bookworm,
# Python 3.11.16, pinned by the OCI index digest recorded by docker-library/repo-info at commit
# 33a22f41ac7bf613bc03380b0317536a9a7fb5e8). Re-pin deliberately:
#   docker buildx imagetools inspect python:3.11-slim-bookworm
# Without a registry: --build-arg BASE_IMAGE=localhost/irflow-base:bookworm (.ci/start-podman.sh).
# Keep the Python minor version at 3.11 (Snakemake bind-mounts the host's Python search paths
# into the container for `script:` rules).
ARG BASE_IMAGE=python:3.11-slim-bookworm@sha256:0bee7276f83efd4a1ee05bbbf4281d95ed28e079220a9457f25a93e3f1e3c31b

# ---------------------------------------------------------------------------------------------
# Build stage: a venv in /opt/venv with torch from TORCH_INDEX_URL, then exactly the lock.
# ---------------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS build
ARG LOCK_SHA256=
ARG PIP_INDEX_URL=
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
COPY containers/build-tools.txt envs/requirements.lock /tmp/irflow/
COPY containers/build-inputs/ /tmp/build-inputs/
COPY pyproject.toml /tmp/irflow/pkg/
COPY src/ /tmp/irflow/pkg/src/
# 1. torch alone, from the PyTorch index (the default index as fallback for its dependencies),
#    constrained to the lock's versions; a CPU wheel (2.13.0+cpu) satisfies the lock's
#    torch==2.13.0 (PEP 440 ignores the local label).
# 2. the rest of the lock exactly (--no-deps), irflow itself, then `pip check`.
RUN set -eu; \
    if [ -n "$LOCK_SHA256" ]; then echo "$LOCK_SHA256  /tmp/irflow/requirements.lock" | sha256sum -c -; fi; \
    if [ -s /tmp/build-inputs/ca-bundle.crt ]; then export PIP_CERT=/tmp/build-inputs/ca-bundle.crt; fi; \
    if [ -d /tmp/build-inputs/wheels ]; then export PIP_FIND_LINKS=/tmp/build-inputs/wheels; fi; \
    if [ -z "$PIP_INDEX_URL" ]; then unset PIP_INDEX_URL; fi; \
    export PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1; \
    python3 -m venv /opt/venv; \
    pip="/opt/venv/bin/python -m pip"; \
    $pip install --quiet --no-deps -r /tmp/irflow/build-tools.txt; \
    torch_pin=$(grep -E '^torch==' /tmp/irflow/requirements.lock); \
    if [ -n "$TORCH_INDEX_URL" ]; then \
        $pip install --quiet --constraint /tmp/irflow/requirements.lock \
            --index-url "$TORCH_INDEX_URL" \
            --extra-index-url "${PIP_INDEX_URL:-https://pypi.org/simple}" "$torch_pin"; \
    else \
        $pip install --quiet --constraint /tmp/irflow/requirements.lock "$torch_pin"; \
    fi; \
    $pip install --quiet --no-deps -r /tmp/irflow/requirements.lock; \
    $pip install --quiet --no-deps --no-build-isolation /tmp/irflow/pkg; \
    $pip check; \
    cd /; /opt/venv/bin/python -c "import torch, transformers, sentence_transformers, irflow.models, irflow.dense, irflow.cross_encoder, irflow.evaluate, irflow.bm25; print('torch image imports ok: torch', torch.__version__, 'cuda', torch.version.cuda)"

# ---------------------------------------------------------------------------------------------
# Final stage: the base + the venv; no build inputs, no pip cache, a non-root user.
# ---------------------------------------------------------------------------------------------
FROM ${BASE_IMAGE}
ARG BASE_IMAGE
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG VERSION=0.1.0
ARG VCS_REF=unknown
ARG VCS_DIRTY=unknown
ARG SOURCE_URL=unknown
ARG LOCK_SHA256=unknown
LABEL org.opencontainers.image.title="irflow-torch" \
      org.opencontainers.image.description="irflow workflow: rules that run neural models (PyTorch)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${VCS_REF}" \
      org.opencontainers.image.source="${SOURCE_URL}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${BASE_IMAGE}" \
      io.irflow.family="torch" \
      io.irflow.torch.index="${TORCH_INDEX_URL}" \
      io.irflow.vcs.dirty="${VCS_DIRTY}" \
      io.irflow.lock.file="envs/requirements.lock" \
      io.irflow.lock.sha256="${LOCK_SHA256}"
# Read by irflow.provenance: every job run inside the image records which image it was.
ENV IRFLOW_IMAGE_FAMILY="torch" IRFLOW_IMAGE_VERSION="${VERSION}" IRFLOW_IMAGE_REVISION="${VCS_REF}" IRFLOW_IMAGE_LOCK_SHA256="${LOCK_SHA256}"
ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    LANG=C.UTF-8 \
    HF_HUB_OFFLINE=1 \
    HF_DATASETS_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# uid/gid 1000 for `docker run`; apptainer ignores USER and runs as the calling user.
RUN groupadd --gid 1000 irflow && useradd --uid 1000 --gid 1000 --create-home --shell /bin/sh irflow
COPY --from=build /opt/venv /opt/venv
COPY envs/requirements.lock /opt/irflow/requirements.lock
USER 1000:1000
WORKDIR /home/irflow
CMD ["python"]
