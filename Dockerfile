# syntax=docker/dockerfile:1
# ai4life-kit itself: train, predict, package and validate on a GPU machine or a cluster node.
# (Challenge submission images are different: `ai4life-kit challenge build` writes their own
# Dockerfile with only what inference needs.)
#
#   docker build -t ai4life-kit .
#   docker run --rm --gpus all -v "$PWD:/work" ai4life-kit train /opt/ai4life-kit/model_specs/mdc24-hagen-actin.yaml --data data/hagen.tif --out runs/hagen
#   docker run --rm --gpus all --ipc host -v "$PWD:/work" --entrypoint torchrun ai4life-kit \
#       --nproc-per-node 4 -m ai4life_kit train /opt/ai4life-kit/model_specs/n2v2-2d.yaml --data big/ --out runs/big
#   apptainer build ai4life-kit.sif docker-daemon://ai4life-kit:latest      # clusters without docker
#
# torch: PyPI's Linux wheels include CUDA, so the default image runs on NVIDIA GPUs. For a smaller
# CPU-only image: --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    MPLBACKEND=Agg \
    MPLCONFIGDIR=/tmp/matplotlib \
    HOME=/tmp

RUN python3 -m venv /opt/venv \
    && useradd --no-log-init --system --uid 10001 --user-group --home-dir /tmp --no-create-home --shell /usr/sbin/nologin kit

# torch first: the largest layer, and the one that changes least.
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://pypi.org/simple
RUN pip install --no-cache-dir --extra-index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"

# The kit with bioimage.io packaging (bioimageio.core, onnx, onnxruntime), Zarr input/output, and its recipes.
COPY pyproject.toml /opt/ai4life-kit/
COPY src/ /opt/ai4life-kit/src/
RUN pip install --no-cache-dir "/opt/ai4life-kit[bioimageio,zarr]" \
    && ai4life-kit --help > /dev/null
COPY model_specs/ /opt/ai4life-kit/model_specs/

# Mount the data and the run directories at /work (training writes there, not into the image).
WORKDIR /work
USER 10001:10001
ENTRYPOINT ["ai4life-kit"]
CMD ["--help"]
