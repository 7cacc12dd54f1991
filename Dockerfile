# syntax=docker/dockerfile:1
# catdog serving image: `catdog serve` (LitServe + onnxruntime, no torch) on the ONNX files mounted at
# /models. Build: `docker compose up --build` or `docker build -t catdog .` (see docs/container.md).
#
# Behind a TLS-intercepting proxy, hand the proxy's CA bundle to the pip step as a build secret; it is
# mounted for that one step only and never stored in the image:
#   docker build --secret id=ca-bundle,src=/etc/ssl/certs/ca-certificates.crt -t catdog .
#   podman build --secret id=ca-bundle,src=/etc/ssl/certs/ca-certificates.crt -t catdog .

ARG PYTHON_IMAGE=python:3.11-slim

# ---- build: a virtual environment with catdog[serve] and nothing else ----
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
RUN python -m venv /opt/venv
WORKDIR /src
# pip trusts the system CA bundle (which the optional secret replaces for these steps), not its own copy;
# its wheel cache lives in a cache mount, outside the image.
ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt
# Dependencies first, from pyproject.toml alone (with an empty package), so that editing catdog's code
# reuses this layer.
COPY pyproject.toml ./
RUN --mount=type=secret,id=ca-bundle,target=/etc/ssl/certs/ca-certificates.crt \
    --mount=type=cache,target=/root/.cache/pip \
    mkdir catdog && touch catdog/__init__.py \
    && /opt/venv/bin/pip install ".[serve]" \
    && /opt/venv/bin/pip uninstall --yes catdog && rm -rf catdog build catdog.egg-info
# Then catdog itself, and the venv trimmed to what serving runs: no pip/setuptools, no bundled test suites,
# no onnxruntime C-API library (libonnxruntime.so is for C programs; the Python binding holds its own copy)
# nor its transformer-optimisation scripts; and it must hold no torch and no pandas.
COPY catdog ./catdog
RUN --mount=type=secret,id=ca-bundle,target=/etc/ssl/certs/ca-certificates.crt \
    --mount=type=cache,target=/root/.cache/pip \
    /opt/venv/bin/pip install --no-deps . \
    && /opt/venv/bin/pip uninstall --yes pip setuptools \
    && cd /opt/venv/lib/python3*/site-packages \
    && find . -depth -type d -name tests -exec rm -rf {} + \
    && rm -rf onnxruntime/capi/libonnxruntime.so* onnxruntime/transformers \
    && cd / && rm -r /src \
    && /opt/venv/bin/python -c "import importlib.util as u, sys; sys.exit(any(u.find_spec(m) for m in ('torch', 'pandas')))" \
    && /opt/venv/bin/python -c "import numpy, onnxruntime, litserve, multipart, PIL" \
    && /opt/venv/bin/catdog serve --help >/dev/null \
    && /opt/venv/bin/catdog --version

# ---- runtime: the base image + the venv, as a non-root user ----
FROM ${PYTHON_IMAGE}
RUN useradd --system --user-group --uid 10001 --create-home --home-dir /home/catdog catdog
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    CATDOG_MODELS=pretrained=/models/pretrained.onnx,scratch=/models/scratch.onnx
USER catdog
WORKDIR /home/catdog
EXPOSE 8000
# Healthy = ready: /readyz answers 200 once every model is loaded (Kubernetes probes /livez and /readyz
# apart). No curl in a slim image: the probe is Python's urllib (a non-2xx answer or no answer exits non-zero).
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=4)"]
CMD ["catdog", "serve", "--host", "0.0.0.0", "--port", "8000"]
