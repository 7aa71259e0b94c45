# syntax=docker/dockerfile:1
# irflow "torch-cuda" container family: the "torch" family's contents with PyTorch's CUDA build,
# for GPU nodes. Python 3.11 + envs/requirements-cuda.lock (the CPU lock's pins plus PyPI's
# torch 2.13.0 CUDA 13.0 dependencies: cuda-toolkit, nvidia-*, triton; every file hash-pinned)
# + the irflow package (non-editable). The CUDA user-space libraries come from the nvidia-*
# wheels inside the venv; only the NVIDIA driver comes from the host (apptainer --nv, or the
# NVIDIA container toolkit for docker/podman: `--gpus all` / `--device nvidia.com/gpu=all`).
# The driver must support CUDA 13.0 (NVIDIA driver >= 580).
#
# The rules name the family "torch" (container_image("torch")): on a GPU cluster point that
# family at this image in the config, e.g. containers: {torch: docker://REGISTRY/irflow-torch-cuda@sha256:...}.
#
# Build it with containers/build.py (python containers/build.py torch-cuda), or by hand from
# the repository root:
#
#   docker build -f containers/torch-cuda.Dockerfile -t localhost/irflow-torch-cuda:0.1.0 \
#       --build-arg VCS_REF="$(git rev-parse HEAD)" \
#       --build-arg LOCK_SHA256="$(sha256sum envs/requirements-cuda.lock | cut -d' ' -f1)" .
#
# containers/README.md: building, pinning, SIFs, running the workflow with --sdm apptainer.

# Base: as in containers/eval.Dockerfile and containers/torch.Dockerfile (the Docker Official
# Image python:3.11-slim-bookworm, Python 3.11.16, pinned by the OCI index digest recorded by
# docker-library/repo-info at commit 33a22f41ac7bf613bc03380b0317536a9a7fb5e8). No CUDA base
# image is needed: the libraries are the pinned nvidia-* wheels.
# Without a registry: --build-arg BASE_IMAGE=localhost/irflow-base:bookworm (.ci/start-podman.sh).
ARG BASE_IMAGE=python:3.11-slim-bookworm@sha256:0bee7276f83efd4a1ee05bbbf4281d95ed28e079220a9457f25a93e3f1e3c31b

# ---------------------------------------------------------------------------------------------
# Build stage: a venv in /opt/venv with exactly the lock, every file checked against its hash.
# ---------------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS build
ARG LOCK_SHA256=
ARG PIP_INDEX_URL=
COPY containers/build-tools.txt envs/requirements-cuda.lock /tmp/irflow/
COPY containers/build-inputs/ /tmp/build-inputs/
COPY pyproject.toml /tmp/irflow/pkg/
COPY src/ /tmp/irflow/pkg/src/
# The lock exactly (--no-deps, --require-hashes: a wheel whose sha256 is not in the lock is
# refused, so a local CPU torch wheel cannot slip in), irflow itself, then `pip check`; the
# import check loads torch's CUDA libraries (no GPU is needed for that).
RUN set -eu; \
    if [ -n "$LOCK_SHA256" ]; then echo "$LOCK_SHA256  /tmp/irflow/requirements-cuda.lock" | sha256sum -c -; fi; \
    if [ -s /tmp/build-inputs/ca-bundle.crt ]; then export PIP_CERT=/tmp/build-inputs/ca-bundle.crt; fi; \
    if [ -d /tmp/build-inputs/wheels ]; then export PIP_FIND_LINKS=/tmp/build-inputs/wheels; fi; \
    if [ -z "$PIP_INDEX_URL" ]; then unset PIP_INDEX_URL; fi; \
    export PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1; \
    python3 -m venv /opt/venv; \
    pip="/opt/venv/bin/python -m pip"; \
    $pip install --quiet --no-deps -r /tmp/irflow/build-tools.txt; \
    $pip install --quiet --no-deps --require-hashes -r /tmp/irflow/requirements-cuda.lock; \
    $pip install --quiet --no-deps --no-build-isolation /tmp/irflow/pkg; \
    $pip check; \
    cd /; /opt/venv/bin/python -c "import torch, transformers, sentence_transformers, irflow.models, irflow.dense, irflow.cross_encoder, irflow.evaluate, irflow.bm25; assert torch.version.cuda, 'not a CUDA build of torch'; print('torch-cuda image imports ok: torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version())"

# ---------------------------------------------------------------------------------------------
# Final stage: the base + the venv; no build inputs, no pip cache, a non-root user.
# ---------------------------------------------------------------------------------------------
FROM ${BASE_IMAGE}
ARG BASE_IMAGE
ARG VERSION=0.1.0
ARG VCS_REF=unknown
ARG VCS_DIRTY=unknown
ARG SOURCE_URL=unknown
ARG LOCK_SHA256=unknown
LABEL org.opencontainers.image.title="irflow-torch-cuda" \
      org.opencontainers.image.description="irflow workflow: rules that run neural models (PyTorch, CUDA build)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${VCS_REF}" \
      org.opencontainers.image.source="${SOURCE_URL}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${BASE_IMAGE}" \
      io.irflow.family="torch-cuda" \
      io.irflow.torch.index="https://pypi.org/simple (envs/requirements-cuda.lock, hash-pinned)" \
      io.irflow.vcs.dirty="${VCS_DIRTY}" \
      io.irflow.lock.file="envs/requirements-cuda.lock" \
      io.irflow.lock.sha256="${LOCK_SHA256}"
# Read by irflow.provenance: every job run inside the image records which image it was.
ENV IRFLOW_IMAGE_FAMILY="torch-cuda" IRFLOW_IMAGE_VERSION="${VERSION}" IRFLOW_IMAGE_REVISION="${VCS_REF}" IRFLOW_IMAGE_LOCK_SHA256="${LOCK_SHA256}"
# NVIDIA_*: what the NVIDIA container toolkit mounts from the host (the driver); apptainer --nv
# binds the driver libraries itself and ignores these.
ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    LANG=C.UTF-8 \
    HF_HUB_OFFLINE=1 \
    HF_DATASETS_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
# uid/gid 1000 for `docker run`; apptainer ignores USER and runs as the calling user.
RUN groupadd --gid 1000 irflow && useradd --uid 1000 --gid 1000 --create-home --shell /bin/sh irflow
COPY --from=build /opt/venv /opt/venv
COPY envs/requirements-cuda.lock /opt/irflow/requirements-cuda.lock
USER 1000:1000
WORKDIR /home/irflow
CMD ["python"]
