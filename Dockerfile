# MedSAMix GPU server: the BentoML service over the model store in models/, on onnxruntime-gpu.
#
#   docker build -t medsamix .
#   docker run --gpus all -p 3000:3000 medsamix                  # serves models/demo; OpenAPI at /docs.json
#   docker run --gpus all -p 3000:3000 -v /srv/models:/app/models:ro -e MEDSAMIX_DEFAULT_MODEL=abdomen medsamix
#
# The base's CUDA/cuDNN majors must be those onnxruntime-gpu was built for: the 1.31.1 wheel on PyPI is built with
# CUDA 13.0 (it links libcudart.so.13, libcublas.so.13) and loads cuDNN 9. Bump both together. The host needs an
# NVIDIA driver for CUDA 13 (R580 or newer) and the NVIDIA container toolkit. Never torch: service/ imports none.
FROM nvidia/cuda:13.0.2-cudnn-runtime-ubuntu22.04

ARG DEBIAN_FRONTEND=noninteractive

# DL3008 wants apt versions pinned: the Ubuntu archive drops superseded point releases of python3.11, so an exact pin
# breaks the build at the next security update; the pinned base image tag fixes the distribution instead.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv ca-certificates \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/*

ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# The serving runtime only: pyproject's base dependencies and `serve` extra, version for version (checked by
# tests/test_packaging.py; change pyproject first), with onnxruntime-gpu in place of onnxruntime; never the `search`
# extra, never torch.
# onnxruntime-gpu is pinned exactly because it must match the base image's CUDA major.
# (jammy's ensurepip brings pip 22.0; a current pip resolves this set faster and knows newer wheel tags.)
RUN python3.11 -m venv "$VIRTUAL_ENV" \
    && pip install --no-cache-dir --upgrade "pip>=24" \
    && pip install --no-cache-dir \
        "onnxruntime-gpu==1.31.1" \
        "bentoml>=1.4,<1.5" \
        "numpy>=1.26" \
        "pydantic>=2.6" \
        "pyyaml>=6.0" \
        "rich>=13.7" \
        "fastapi>=0.110" \
        "pydicom>=3.0" \
        "highdicom>=0.23" \
        "pylibjpeg>=2.0" \
        "pylibjpeg-openjpeg>=2.3" \
        "python-gdcm>=3.0.10" \
        "pylibjpeg-rle>=2.0" \
        "pyjpegls>=1.3" \
        "dicomweb-client>=0.61" \
        "nibabel>=5.2" \
        "pynrrd>=1.0"

RUN useradd --create-home --uid 10001 --user-group --shell /usr/sbin/nologin medsamix

WORKDIR /app
# Root-owned and read-only to the service user: the store verifies every model file's sha256 at load.
COPY service/ /app/service/
COPY models/ /app/models/

# BENTOML_HOME holds BentoML's Prometheus multiprocess files: one per server (a second server sharing it would wipe
# and then mix this one's counters). Each container has its own; running two servers in one container, give each
# its own BENTOML_HOME.
ENV MEDSAMIX_MODELS=/app/models \
    MEDSAMIX_DEFAULT_MODEL=demo \
    MEDSAMIX_DEVICE=gpu \
    BENTOML_HOME=/home/medsamix/bentoml \
    BENTOML_DO_NOT_TRACK=true

# Numeric, so that Kubernetes' runAsNonRoot can verify it without the image's /etc/passwd.
USER 10001:10001
EXPOSE 3000

HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:3000/livez', timeout=4)"]

CMD ["bentoml", "serve", "service.service:MedSAMix", "--host", "0.0.0.0", "--port", "3000"]
