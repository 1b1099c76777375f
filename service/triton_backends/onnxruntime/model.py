"""A Python-based Triton backend named ``onnxruntime``: runs a model's ``<version>/model.onnx`` with ORT on CPU.

The tritonserver binary in the nvidia-pytriton wheel ships only the Python backend, not Triton's C++
ONNX Runtime backend. Triton maps ``platform: "onnxruntime_onnx"`` to the backend named ``onnxruntime``;
when that backend's directory holds a ``model.py`` instead of ``libtriton_onnxruntime.so`` Triton runs it
through the Python backend. So our unchanged model_repository loads here exactly as it would on a full
Triton build. Requests of one dynamic batch are concatenated into a single ORT call.
"""

import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    """One ORT session per model instance; inputs/outputs named and typed as in config.pbtxt."""

    def initialize(self, args):
        config = json.loads(args["model_config"])
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        filename = config.get("default_model_filename") or "model.onnx"
        options = ort.SessionOptions()
        # Triton may run several instances; keep each to the threads Triton's config asks for (default 2).
        threads = int(config.get("parameters", {}).get("intra_op_thread_count", {}).get("string_value", "2"))
        options.intra_op_num_threads = threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(os.path.join(version_dir, filename), options,
                                            providers=["CPUExecutionProvider"])
        self.input_names = [i["name"] for i in config["input"]]
        self.output_names = [o["name"] for o in config["output"]]
        self.output_dtypes = {o["name"]: pb_utils.triton_string_to_numpy(o["data_type"]) for o in config["output"]}

    def execute(self, requests):
        # Gather every request's inputs, run once, then split along the batch dimension.
        try:
            per_request = [{name: pb_utils.get_input_tensor_by_name(r, name).as_numpy() for name in self.input_names}
                           for r in requests]
            sizes = [arrays[self.input_names[0]].shape[0] for arrays in per_request]
            feed = {name: np.concatenate([a[name] for a in per_request]) for name in self.input_names}
            outputs = self.session.run(self.output_names, feed)
        except Exception as exc:  # per-request errors never take the model down: answer each request with it
            return [pb_utils.InferenceResponse(error=pb_utils.TritonError(f"onnxruntime: {exc}")) for _ in requests]
        responses, start = [], 0
        for size in sizes:
            tensors = [pb_utils.Tensor(name, np.ascontiguousarray(value[start:start + size]
                                                                  .astype(self.output_dtypes[name])))
                       for name, value in zip(self.output_names, outputs)]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            start += size
        return responses

    def finalize(self):
        self.session = None
