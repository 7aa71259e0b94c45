# syntax=docker/dockerfile:1
# irflow "eval" container family: every rule that needs no PyTorch (prepare_corpus,
# prepare_topics, given_candidates, bm25_index, bm25_retrieve, evaluate_run, baselines_table).
# Python 3.11 + envs/eval.lock + the irflow package (non-editable). No torch, no models.
#
# Build it with containers/build.py (it sets the label arguments below and tags the image
# localhost/irflow-eval:<version> and :<git-short-sha>), or by hand from the repository root:
#
#   docker build -f containers/eval.Dockerfile -t localhost/irflow-eval:0.1.0 \
#       --build-arg VCS_REF="$(git rev-parse HEAD)" \
#       --build-arg LOCK_SHA256="$(sha256sum envs/eval.lock | cut -d' ' -f1)" .
#
# containers/README.md: building, pinning, SIFs, running the workflow with --sdm apptainer.

# Base: the Docker Official Image python:3.11-slim-bookworm (Python 3.11.16, Debian 12), pinned
# by its multi-arch OCI index digest as recorded by docker-library/repo-info
# (repos/python/remote/3.11-slim-bookworm.md at commit 33a22f41ac7bf613bc03380b0317536a9a7fb5e8;
# its linux/amd64 manifest is sha256:2fc9207f64226cb05ac317cee0bab6fa55a9ea311ce5a086baddd4b4a83c2d3c).
# Re-pin deliberately: docker buildx imagetools inspect python:3.11-slim-bookworm
# Machines without a registry pass a local base instead (see .ci/start-podman.sh):
#   --build-arg BASE_IMAGE=localhost/irflow-base:bookworm
# Keep the Python minor version at 3.11: for `script:` rules Snakemake bind-mounts the host's
# Python search paths into the container and unpickles its job object there.
ARG BASE_IMAGE=python:3.11-slim-bookworm@sha256:0bee7276f83efd4a1ee05bbbf4281d95ed28e079220a9457f25a93e3f1e3c31b

# ---------------------------------------------------------------------------------------------
# Build stage: a venv in /opt/venv with exactly the lock file's packages and irflow.
# ---------------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS build
ARG LOCK_SHA256=
ARG PIP_INDEX_URL=
COPY containers/build-tools.txt envs/eval.lock /tmp/irflow/
COPY containers/build-inputs/ /tmp/build-inputs/
COPY pyproject.toml /tmp/irflow/pkg/
COPY src/ /tmp/irflow/pkg/src/
# pip: --no-deps installs the lock exactly (no resolver, nothing unlisted); `pip check` then
# proves it complete. Its only expected complaint is irflow's own torch-family dependencies,
# which this image leaves out on purpose.
RUN set -eu; \
    if [ -n "$LOCK_SHA256" ]; then echo "$LOCK_SHA256  /tmp/irflow/eval.lock" | sha256sum -c -; fi; \
    if [ -s /tmp/build-inputs/ca-bundle.crt ]; then export PIP_CERT=/tmp/build-inputs/ca-bundle.crt; fi; \
    if [ -d /tmp/build-inputs/wheels ]; then export PIP_FIND_LINKS=/tmp/build-inputs/wheels; fi; \
    if [ -z "$PIP_INDEX_URL" ]; then unset PIP_INDEX_URL; fi; \
    export PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1; \
    python3 -m venv /opt/venv; \
    /opt/venv/bin/python -m pip install --quiet --no-deps -r /tmp/irflow/build-tools.txt; \
    /opt/venv/bin/python -m pip install --quiet --no-deps -r /tmp/irflow/eval.lock; \
    /opt/venv/bin/python -m pip install --quiet --no-deps --no-build-isolation /tmp/irflow/pkg; \
    if ! out=$(/opt/venv/bin/python -m pip check 2>&1); then \
        if printf '%s\n' "$out" | grep -v '^irflow ' | grep .; then exit 1; fi; \
    fi; \
    /opt/venv/bin/python -c "import importlib.util as u, sys; sys.exit('torch must not be in the eval image' if u.find_spec('torch') else 0)"; \
    cd /; /opt/venv/bin/python -c "import irflow.io, irflow.data, irflow.evaluate, irflow.bm25, irflow.logs, irflow.compare, irflow.package, repro_eval.measure.document_order, repro_eval.measure.effectiveness, repro_eval.measure.overall_effects, ir_datasets, ir_measures, pytrec_eval, pandas, pyarrow.parquet, tabulate, bm25s, Stemmer, numpy, scipy, yaml; print('eval image imports ok:', irflow.__file__)"

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
LABEL org.opencontainers.image.title="irflow-eval" \
      org.opencontainers.image.description="irflow workflow: data preparation, BM25 and evaluation rules (no PyTorch)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${VCS_REF}" \
      org.opencontainers.image.source="${SOURCE_URL}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${BASE_IMAGE}" \
      io.irflow.family="eval" \
      io.irflow.vcs.dirty="${VCS_DIRTY}" \
      io.irflow.lock.file="envs/eval.lock" \
      io.irflow.lock.sha256="${LOCK_SHA256}"
# Read by irflow.provenance: every job run inside the image records which image it was.
ENV IRFLOW_IMAGE_FAMILY="eval" IRFLOW_IMAGE_VERSION="${VERSION}" IRFLOW_IMAGE_REVISION="${VCS_REF}" IRFLOW_IMAGE_LOCK_SHA256="${LOCK_SHA256}"
ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    LANG=C.UTF-8 \
    HF_HUB_OFFLINE=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# uid/gid 1000 for `docker run`; apptainer ignores USER and runs as the calling user.
RUN groupadd --gid 1000 irflow && useradd --uid 1000 --gid 1000 --create-home --shell /bin/sh irflow
COPY --from=build /opt/venv /opt/venv
COPY envs/eval.lock /opt/irflow/eval.lock
USER 1000:1000
WORKDIR /home/irflow
CMD ["python"]
