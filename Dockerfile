# The operator image: the wheel installed into a virtualenv on a slim Python, run as a non-root numeric user.
#
# BASE_IMAGE is any Debian-like image with python3 (3.11+) and its venv module: python:3.11-slim by default; the
# project's test stack builds one from Debian packages (devstack/builds/images.py) and builds this very file with buildah.
# PIP_INDEX_URL and PIP_CERT reach pip in the build stage only, for builds behind a package mirror.
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS build
ARG PIP_INDEX_URL
ARG PIP_CERT
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator_k8s ./operator_k8s
RUN python3 -m venv /opt/build \
 && /opt/build/bin/pip wheel --no-cache-dir --disable-pip-version-check --wheel-dir /wheels .

FROM ${BASE_IMAGE}
# Debian's base-passwd already has a group called "operator" (gid 37), hence the project's own name.
RUN useradd --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin operator-k8s
COPY --from=build /wheels /wheels
RUN python3 -m venv /opt/operator-k8s \
 && /opt/operator-k8s/bin/pip install --no-cache-dir --disable-pip-version-check --no-index --find-links /wheels \
      operator-k8s \
 && rm -rf /wheels
ENV PATH=/opt/operator-k8s/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
USER 10001:10001
EXPOSE 8080 8081
ENTRYPOINT ["operator-k8s"]
