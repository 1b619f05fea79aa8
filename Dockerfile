# syntax=docker/dockerfile:1
# One image for every callcenter service. The command is chosen per service by the manifests
# (deploy/k8s) or compose.yaml: callcenter-sip-edge, callcenter-dispatcher, callcenter-cdr-writer,
# callcenter-api. Build: docker build -t callcenter:dev .

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# -- build: a wheel of this repo, then that wheel and its dependencies into a venv -----------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python -m venv /opt/venv
COPY pyproject.toml README.md ./
COPY src ./src
COPY services ./services
# Every dependency of these extras ships wheels for amd64 and arm64 (sippy is pure Python), so the
# slim image needs no compiler. Only the service extras: no `test`/`dev` extra, and devtools/ (the
# dev-only callcenter-dev distribution) is not in the build context. tests/deploy/test_wheel.py
# builds the same wheel, installs it the same way and imports every module.
RUN /opt/venv/bin/pip wheel --no-deps --wheel-dir /wheels . \
 && /opt/venv/bin/pip install "$(ls /wheels/callcenter-*.whl)[sip-edge,api,postgres,celery]" \
 && /opt/venv/bin/pip check

# -- runtime: the venv only, non-root ------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --system --gid 10001 callcenter \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/callcenter --no-create-home \
            --shell /usr/sbin/nologin callcenter \
 && install -d -o 10001 -g 10001 -m 0750 /var/lib/callcenter
COPY --from=build /opt/venv /opt/venv
# Bytecode was compiled at install time; never write .pyc at run time (the root filesystem is
# read-only in Kubernetes). JSON logs: containers have no TTY.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    CC_LOG_FORMAT=json
# the working directory is the one writable place (the SQLite default of a bare `docker run`)
WORKDIR /var/lib/callcenter
USER 10001:10001
# api HTTP, health endpoint of the other services, SIP
EXPOSE 8080/tcp 8081/tcp 5060/udp
# A sensible default only; every deployment names the service's command explicitly.
CMD ["callcenter-api"]
