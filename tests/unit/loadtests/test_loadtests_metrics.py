"""The harness's pure parts: request plans, the level summary (vLLM's definitions), perf_analyzer-style CSV
rows, and the FLOP count of an ONNX graph."""

from __future__ import annotations

import pytest

from loadtests.bench.flops import count_flops, flops_per_cycle
from loadtests.inputs import InputImage
from loadtests.metrics import RequestRecord, summarise
from loadtests.report import csv_row
from loadtests.scenarios import INVALID_IMAGE, RequestPlan, parse_mix


def image(name: str, questions=("q1", "q2")) -> InputImage:
    return InputImage(name, b"\x89PNG" + name.encode(), "image/png", "ct", tuple(questions))


def test_plan_cycles_kinds_by_weight_and_spreads_invalid_requests_evenly():
    plan = RequestPlan.for_scenario("mixed", [image("a"), image("b")], parse_mix("ask-stream=1,segment=3"),
                                    invalid_share=0.25)
    specs = [plan.next() for _ in range(8)]
    assert [s.kind for s in specs] == ["ask-stream", "segment", "segment", "segment"] * 2
    assert [s.index for s in specs if s.invalid] == [3, 7]
    assert specs[3].image_data == INVALID_IMAGE and specs[0].image_data == specs[0].image.data
    assert [s.question for s in specs[:4]] == ["q1", "q1", "q2", "q2"]  # each image's questions take turns


@pytest.mark.parametrize("mix", ["ask=0", "draw=1", "ask=x", ""])
def test_bad_mixes_are_refused(mix):
    with pytest.raises(ValueError):
        parse_mix(mix)


def streamed(start: float, ttft: float, gaps: list[float], tokens: int) -> RequestRecord:
    times = [start + ttft]
    for gap in gaps:
        times.append(times[-1] + gap)
    return RequestRecord("ask-stream", start, times[-1], True, "OK", ttft=ttft, chunk_times=times,
                         prompt_tokens=10, output_tokens=tokens)


def test_summary_follows_vllm_definitions_and_counts_errors_by_code():
    records = [streamed(0.0, 0.1, [0.02, 0.02, 0.02], 4),  # e2e 0.16 s
               streamed(0.0, 0.3, [0.05], 2),  # e2e 0.35 s
               RequestRecord("ask-stream", 0.0, 0.01, False, "INVALID_ARGUMENT"),
               RequestRecord("segment", 0.0, 0.01, False, "INVALID_ARGUMENT"),
               RequestRecord("segment", 0.0, 0.5, False, "client:timeout")]
    summary = summarise(records, wall_s=2.0, slo_ttft_ms=200)
    assert (summary["completed"], summary["failed"]) == (2, 3)
    assert summary["errors_by_code"] == {"INVALID_ARGUMENT": 2, "client:timeout": 1}
    assert summary["request_throughput"] == pytest.approx(1.0)
    assert summary["output_throughput"] == pytest.approx(3.0)  # 6 tokens in 2 s
    assert summary["request_goodput"] == pytest.approx(0.5)  # only the first meets TTFT <= 200 ms
    assert summary["median_ttft_ms"] == pytest.approx(200.0)
    # TPOT = (e2e - ttft) / (tokens - 1): 60 ms / 3 = 20 ms and 50 ms / 1 = 50 ms
    assert summary["mean_tpot_ms"] == pytest.approx(35.0)
    assert summary["mean_itl_ms"] == pytest.approx((3 * 20 + 50) / 4)
    assert summary["p99_e2el_ms"] <= 350.0 + 1e-6 and summary["median_e2el_ms"] == pytest.approx(255.0)
    assert summary["by_kind"]["segment"]["failed"] == 2


def test_csv_row_uses_perf_analyzer_columns_in_microseconds():
    level = summarise([RequestRecord("segment", 0.0, 0.004, True, "OK",
                                     server={"queue_ms": 0.5, "preprocess_ms": 1.0, "engine_ms": 2.0,
                                             "total_ms": 3.5})], wall_s=1.0)
    level["max_concurrency"] = 4
    row = csv_row(level)
    assert row["Concurrency"] == 4 and row["p50 latency"] == 4000 and row["Avg latency"] == 4000
    assert (row["Server Queue"], row["Server Compute Input"], row["Server Compute Infer"]) == (500, 1000, 2000)
    assert row["Network+Server Send/Recv"] == 500  # client 4.0 ms - server 3.5 ms


def test_flop_count_of_a_single_convolution(tmp_path):
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.zeros((8, 3, 3, 3), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["y"], ["z"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 16, 16])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)], [weight])
    path = tmp_path / "conv.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    flops = count_flops(path)
    assert flops["matmul_flops"] == 2 * (8 * 16 * 16) * (3 * 3 * 3)
    assert flops["elementwise_flops"] == 8 * 16 * 16


def test_peak_flops_per_cycle_follows_the_widest_fma():
    assert flops_per_cycle({"avx512f", "avx2", "fma"})[0] == 64
    assert flops_per_cycle({"avx2", "fma", "avx"})[0] == 32
    assert flops_per_cycle({"sse2"})[0] == 8
