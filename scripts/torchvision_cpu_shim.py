"""Let PyPI's CUDA-linked torchvision import next to the CPU build of torch.

Installed into site-packages as ``_torchvision_cpu_shim`` with a ``.pth`` file that imports it (see
scripts/setup_env.sh). Why it exists: vLLM's LLaVA code imports an image processor that needs torchvision,
PyPI has no CPU build of torchvision, and the CUDA build's compiled ops cannot load beside torch+cpu; its
``_meta_registrations`` then registers fake kernels for ``torchvision::nms``/``qnms`` at import time and the
import fails with "operator torchvision::nms does not exist".

Right before torchvision is first imported, this finder tries to load torchvision's compiled library; only if
that fails does it define the two bare operator schemas, so the import and the pure-PyTorch transforms work
while torchvision's C++ ops keep raising their usual error. Nothing (not even torch) is imported until
something imports torchvision, and a working CPU build of torchvision is left untouched.
"""

import importlib.abc
import importlib.machinery
import os
import sys

_LIBRARY = None  # holds the torch.library registration for the life of the process


class TorchvisionCpuShim(importlib.abc.MetaPathFinder):
    """Runs once, on the first ``import torchvision``; always lets the normal finders do the import."""

    armed = True

    def find_spec(self, fullname, path=None, target=None):
        global _LIBRARY
        if fullname != "torchvision" or not TorchvisionCpuShim.armed:
            return None
        TorchvisionCpuShim.armed = False
        try:
            spec = importlib.machinery.PathFinder.find_spec("torchvision")
            if spec is None or not spec.submodule_search_locations:
                return None
            compiled = os.path.join(list(spec.submodule_search_locations)[0], "_C.so")
            import torch

            try:
                torch.ops.load_library(compiled)
            except (OSError, ImportError):
                _LIBRARY = torch.library.Library("torchvision", "FRAGMENT")
                for op in ("nms", "qnms"):
                    _LIBRARY.define(op + "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        except Exception:  # a start-up hook must never break the interpreter
            pass
        return None


if not any(type(f).__name__ == "TorchvisionCpuShim" for f in sys.meta_path):
    sys.meta_path.insert(0, TorchvisionCpuShim())
