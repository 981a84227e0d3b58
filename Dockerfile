# syntax=docker/dockerfile:1
# driftd container image. CPU by default; `--build-arg VARIANT=cuda` installs PyPI's CUDA build of torch
# instead (run it with `--gpus all`; fine-tunes then use AMP on the GPU). See README "Container".
#
#   docker build -t driftd:cpu .
#   docker build --build-arg VARIANT=cuda -t driftd:cuda .

# --- build: a venv with driftd and its pinned dependencies -------------------------------------
FROM python:3.11.7-slim-bookworm AS build
ARG VARIANT=cpu
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/driftd
COPY requirements-broker.txt requirements-checkpoints.txt pyproject.toml README.md ./
COPY daemon/ daemon/
COPY streams/ streams/
COPY models/ models/
# torch is pinned in pyproject.toml; the CPU variant takes it from PyTorch's CPU index so that no
# CUDA libraries (several GB) land in the image, the CUDA variant from PyPI, whose Linux wheel is CUDA's.
RUN case "${VARIANT}" in \
        cpu) /opt/driftd/bin/pip install --index-url https://download.pytorch.org/whl/cpu "torch==$(sed -n 's/^ *"torch==\([^"]*\)".*/\1/p' pyproject.toml)" ;; \
        cuda) ;; \
        *) echo "VARIANT must be cpu or cuda, got ${VARIANT}" >&2; exit 1 ;; \
    esac \
 && /opt/driftd/bin/pip install --require-hashes --no-deps -r requirements-broker.txt -r requirements-checkpoints.txt \
 && /opt/driftd/bin/pip install /src

# --- runtime: the venv, the shipped dataset and config, a non-root user -------------------------
FROM python:3.11.7-slim-bookworm
ARG VARIANT=cpu
LABEL org.opencontainers.image.title="driftd" \
      org.opencontainers.image.description="Keeps a conversational intent model good while the world changes under it" \
      org.opencontainers.image.licenses="see LICENSE and data/*/LICENSE" \
      io.driftd.variant="${VARIANT}"
RUN groupadd --system --gid 10001 driftd \
 && useradd --system --uid 10001 --gid driftd --home-dir /var/lib/driftd --shell /usr/sbin/nologin driftd \
 && install -d -o driftd -g driftd -m 0750 /var/lib/driftd \
 && install -d -m 0755 /etc/driftd
COPY --from=build /opt/driftd /opt/driftd
COPY data/ /opt/driftd/share/data/
COPY config.toml /etc/driftd/config.toml
# config.toml is meant to be mounted over /etc/driftd/config.toml; secrets come as DRIFTD_* variables.
ENV PATH=/opt/driftd/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    DRIFTD_CONFIG=/etc/driftd/config.toml \
    DRIFTD_DAEMON__DATA_DIR=/var/lib/driftd \
    DRIFTD_REPLAY__DATA_DIR=/opt/driftd/share/data
USER driftd
WORKDIR /var/lib/driftd
VOLUME ["/var/lib/driftd"]
EXPOSE 8780
# `driftd healthcheck` reads the same configuration as the daemon: its port, and https when TLS is on.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["driftd", "healthcheck"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["driftd"]
CMD ["run"]
