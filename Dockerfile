# syntax=docker/dockerfile:1.7
# The one image of the project: the store server (`eventstore serve`, the entrypoint)
# and the operator (`eventstore-operator`, the chart's Deployment sets it as command).
#
#   docker build -t ghcr.io/eventstore-py/eventstore:0.1.0 .      (make image)
#
# Stage 1 builds wheels for the project and every dependency; stage 2 installs them
# offline (--no-index) from a bind mount, so the final image holds no compiler, no
# wheel cache and no build backend: only the interpreter and the installed packages.

# Pinned by exact tag (patch release and Debian release). Bump both stages together.
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
# Only what the wheel needs (see .dockerignore): tests, charts and docs stay out.
COPY pyproject.toml README.md ./
COPY eventstore ./eventstore
COPY operator ./operator
# Wheels for the project (with the operator extra) and all its pinned dependencies.
# Every dependency ships manylinux wheels (psycopg[binary] included); --only-binary
# fails the build loudly instead of compiling from source if one ever stops doing so.
RUN pip wheel --wheel-dir /wheels --only-binary=:all: --no-binary=eventstore ".[operator]"

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="eventstore" \
      org.opencontainers.image.description="Event store server and its Kubernetes operator" \
      org.opencontainers.image.source="https://github.com/eventstore-py/eventstore" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
# The wheels are bind-mounted for this one step, never copied into a layer. pip compiles
# the bytecode at install time, so a read-only root filesystem costs nothing at runtime.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links /wheels "eventstore[operator]" \
    && pip uninstall -y setuptools wheel
# The uid/gid the operator's pod templates run as (builders.RUN_AS_USER, the chart's
# podSecurityContext); no login shell, no home directory files.
RUN groupadd --system --gid 10001 eventstore \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin eventstore \
    && install -d -o 10001 -g 10001 -m 0750 /data
USER 10001:10001
WORKDIR /data
EXPOSE 8080
# The store pods run `eventstore serve`; the operator Deployment overrides the command
# with `eventstore-operator`.
ENTRYPOINT ["eventstore"]
CMD ["serve"]
