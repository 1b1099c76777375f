"""Arithmetic of an ONNX graph and the peak of this CPU, for achieved-GFLOP/s figures.

FLOPs are counted from the graph after ONNX shape inference (batch 1): a convolution costs
``2 x output elements x (input channels / groups) x kernel area`` (one multiply and one add per weight
use), ``Gemm`` / ``MatMul`` ``2 x M x N x K``; element-wise and reduction nodes (ReLU, Add, Resize, softmax
parts) one operation per output element, reported apart because they are memory-bound.

The CPU's peak is estimated as ``cores x clock x FLOPs per cycle per core``. FLOPs per cycle come from the
widest vector FMA the flags advertise (fp32): AVX-512F 2 x 16 x 2 = 64, AVX2+FMA 2 x 8 x 2 = 32 (two
256-bit FMA pipes, as on AMD Zen 2-4 and Intel since Haswell), AVX 16, SSE 8. The clock is the one the
kernel reports (``cpu MHz`` of /proc/cpuinfo, else lscpu's maximum, else BogoMIPS / 2); turbo may run
above it, so the estimate is a nominal, not an absolute, ceiling.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

ELEMENTWISE = {"Relu", "Add", "Sub", "Mul", "Div", "Exp", "Resize", "ReduceMax", "ReduceSum", "ArgMax", "Sigmoid",
               "Clip", "Cast", "BatchNormalization", "MaxPool", "AveragePool", "Concat", "Softmax"}


def _shape_map(model) -> dict[str, list[int]]:
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    graph = inferred.graph
    shapes = {}
    for value in [*graph.input, *graph.value_info, *graph.output]:
        dims = value.type.tensor_type.shape.dim
        shapes[value.name] = [d.dim_value for d in dims]
    for init in graph.initializer:
        shapes[init.name] = list(init.dims)
    return shapes


def _product(values) -> int:
    result = 1
    for value in values:
        result *= int(value)
    return result


def count_flops(path: Path, batch: int = 1) -> dict:
    """``{"matmul_flops", "elementwise_flops", "total_flops", "by_op"}`` of one forward pass at ``batch``."""
    import onnx

    model = onnx.load(str(path))
    for value in model.graph.input:
        first = value.type.tensor_type.shape.dim[0]
        if first.dim_param or not first.dim_value:
            first.dim_value = batch  # the symbolic batch dimension, fixed so shapes can be inferred
    shapes = _shape_map(model)
    by_op: dict[str, int] = {}
    matmul = elementwise = 0
    for node in model.graph.node:
        out = shapes.get(node.output[0]) if node.output else None
        if node.op_type in ("Conv", "ConvTranspose"):
            weight = shapes[node.input[1]]
            if node.op_type == "Conv":
                flops = 2 * _product(out) * (weight[1] * _product(weight[2:]))
            else:  # weight [C_in, C_out / group, kh, kw]: each input element meets its group's kernels
                flops = 2 * _product(shapes[node.input[0]]) * weight[1] * _product(weight[2:])
            matmul += flops
        elif node.op_type in ("MatMul", "Gemm"):
            a = shapes[node.input[0]]
            flops = 2 * _product(out) * a[-1]
            matmul += flops
        elif node.op_type in ELEMENTWISE and out:
            flops = _product(out)
            elementwise += flops
        else:
            continue
        by_op[node.op_type] = by_op.get(node.op_type, 0) + flops
    return {"matmul_flops": matmul, "elementwise_flops": elementwise, "total_flops": matmul + elementwise,
            "by_op": by_op, "batch": batch}


def cpu_flags() -> set[str]:
    """The CPU feature flags of /proc/cpuinfo."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    match = re.search(r"^flags\s*:\s*(.*)$", text, re.M)
    return set(match.group(1).split()) if match else set()


def cpu_clock_ghz() -> tuple[float, str]:
    """(GHz, where it came from); see the module docstring."""
    try:
        text = Path("/proc/cpuinfo").read_text()
        mhz = [float(m) for m in re.findall(r"^cpu MHz\s*:\s*([\d.]+)", text, re.M)]
        if mhz:
            return max(mhz) / 1000.0, "cpu MHz in /proc/cpuinfo"
        bogo = re.search(r"^bogomips\s*:\s*([\d.]+)", text, re.M)
    except OSError:
        bogo = None
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        found = re.search(r"CPU max MHz:\s*([\d.]+)", lscpu)
        if found:
            return float(found.group(1)) / 1000.0, "lscpu CPU max MHz"
    except (OSError, subprocess.SubprocessError):
        pass
    if bogo:
        return float(bogo.group(1)) / 2000.0, "BogoMIPS / 2"
    return 2.0, "assumed (no clock reported)"


def flops_per_cycle(flags: set[str]) -> tuple[int, str]:
    """fp32 FLOPs per cycle per core from the widest FMA the flags advertise."""
    if "avx512f" in flags:
        return 64, "AVX-512F: 2 FMA pipes x 16 fp32 lanes x 2"
    if "avx2" in flags and "fma" in flags:
        return 32, "AVX2 + FMA: 2 FMA pipes x 8 fp32 lanes x 2"
    if "avx" in flags:
        return 16, "AVX without FMA: 8 lanes x (1 mul + 1 add)"
    return 8, "SSE: 4 lanes x (1 mul + 1 add)"


def cpu_model() -> str:
    """The CPU's model name."""
    try:
        match = re.search(r"^model name\s*:\s*(.*)$", Path("/proc/cpuinfo").read_text(), re.M)
        return match.group(1).strip() if match else "unknown"
    except OSError:
        return "unknown"


def peak_estimate(cores: int | None = None) -> dict:
    """This machine's nominal fp32 peak (see the module docstring)."""
    cores = cores or os.cpu_count() or 1
    ghz, clock_source = cpu_clock_ghz()
    per_cycle, vector = flops_per_cycle(cpu_flags())
    return {"cpu": cpu_model(), "cores": cores, "clock_ghz": round(ghz, 3), "clock_source": clock_source,
            "flops_per_cycle_per_core": per_cycle, "vector_unit": vector,
            "peak_gflops": round(cores * ghz * per_cycle, 1),
            "peak_gflops_one_core": round(ghz * per_cycle, 1)}
