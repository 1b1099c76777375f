"""The load harness (``python -m loadtests run``) against the real service on 127.0.0.1:0: short bounded runs
over gRPC, HTTP and the OpenAI route, checking the report files, their fields, and that refused requests are
counted under the status code the transport gave them."""

from __future__ import annotations

import csv
import json

import pytest

from loadtests.cli import main
from loadtests.report import PERF_ANALYZER_COLUMNS
from tests.support.service_process import COMMITTED_REPOSITORY

pytestmark = pytest.mark.timeout(300)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
VLLM_STYLE_KEYS = {"request_throughput", "output_throughput", "request_goodput", "completed", "failed",
                   "mean_ttft_ms", "median_ttft_ms", "p99_ttft_ms", "median_itl_ms", "median_tpot_ms",
                   "median_e2el_ms", "p90_e2el_ms", "p95_e2el_ms", "p99_e2el_ms", "ttfts", "itls", "e2els",
                   "output_lens", "errors", "errors_by_code", "client_cpu_percent", "client_peak_rss_mb",
                   "server_cpu_percent", "server_peak_rss_mb", "max_concurrency", "request_rate"}


def run_harness(*args: str) -> int:
    return main(["run", *args])


def read_report(out):
    report = json.loads((out / "results.json").read_text())
    with open(out / "results.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    return report, rows


def test_grpc_mixed_closed_loop_counts_refused_images_under_invalid_argument(service, tmp_path):
    out = tmp_path / "grpc"
    assert run_harness("--target", "grpc", "--address", service.grpc_address, "--scenario", "mixed",
                       "--mix", "ask-stream=1,segment=1", "--concurrency", "1,2", "--requests", "8",
                       "--invalid-share", "0.25", "--max-tokens", "12", "--inputs", "4", "--warmup", "0",
                       "--out", str(out)) == 0
    report, rows = read_report(out)
    assert [level["max_concurrency"] for level in report["results"]] == [1, 2]
    for level in report["results"]:
        assert VLLM_STYLE_KEYS <= set(level)
        # Requests 4 and 8 of each level carry no image: refused with the gRPC code, nothing else failed.
        assert level["errors_by_code"] == {"INVALID_ARGUMENT": 2}
        assert (level["completed"], level["failed"]) == (6, 2)
        assert level["median_ttft_ms"] > 0 and level["total_output_tokens"] > 0  # streamed asks were measured
        assert level["median_ttft_ms"] <= level["p99_e2el_ms"]
        assert set(level["by_kind"]) == {"ask-stream", "segment"}
        assert level["server_cpu_percent"] is not None and level["server_peak_rss_mb"] > 0  # pid found from the port
    assert [int(row["Concurrency"]) for row in rows] == [1, 2]
    assert set(PERF_ANALYZER_COLUMNS) <= set(rows[0])
    assert rows[0]["Errors"] == "INVALID_ARGUMENT=2"
    assert int(rows[0]["p99 latency"]) >= int(rows[0]["p50 latency"]) > 0  # microseconds, as perf_analyzer writes
    for plot in ("latency.png", "throughput.png"):
        assert (out / plot).read_bytes().startswith(PNG_MAGIC)


def test_http_open_loop_streams_and_counts_400s(service, tmp_path):
    out = tmp_path / "http"
    assert run_harness("--target", "http", "--address", service.http_url.removeprefix("http://"),
                       "--scenario", "ask-stream", "--rate", "4", "--requests", "6", "--invalid-share", "0.5",
                       "--max-tokens", "8", "--inputs", "2", "--warmup", "0", "--out", str(out), "--no-plots") == 0
    report, rows = read_report(out)
    (level,) = report["results"]
    assert report["run"]["mode"] == "open (Poisson)" and level["max_concurrency"] is None
    assert level["errors_by_code"] == {"400": 3} and level["completed"] == 3
    assert all(err.startswith("400: ") for err in level["errors"])
    assert len(level["ttfts"]) == 3 and all(t > 0 for t in level["ttfts"])
    assert rows[0]["Request Rate"] == "4.0"
    assert not (out / "latency.png").exists()


def test_openai_route_reports_tokens_and_goodput_against_an_slo(service, tmp_path):
    out = tmp_path / "openai"
    assert run_harness("--target", "openai", "--address", service.http_url.removeprefix("http://"),
                       "--scenario", "ask-stream", "--concurrency", "2", "--requests", "4", "--max-tokens", "8",
                       "--inputs", "2", "--warmup", "1", "--slo-e2e-ms", "0.001", "--out", str(out)) == 0
    (level,) = read_report(out)[0]["results"]
    assert level["completed"] == 4 and level["failed"] == 0
    assert 0 < max(level["output_lens"]) <= 8 and len(level["ttfts"]) == 4
    assert level["request_goodput"] == 0.0 < level["request_throughput"]  # no request answers in a microsecond


def test_segment_run_starts_and_stops_its_own_service(tmp_path):
    repository = tmp_path / "segmenters_only"
    repository.mkdir()
    for model in sorted(COMMITTED_REPOSITORY.glob("organ_seg_*")):
        (repository / model.name).symlink_to(model)
    out = tmp_path / "own"
    assert run_harness("--target", "http", "--scenario", "segment", "--concurrency", "2", "--requests", "6",
                       "--inputs", "2", "--image-side", "128", "--out", str(out), "--no-plots",
                       "--service-args", f"--model-repository {repository} --max-batch-size 4") == 0
    report, _ = read_report(out)
    (level,) = report["results"]
    assert report["run"]["started_service"] is True
    assert level["completed"] == 6 and level["server_peak_rss_mb"] > 0
    assert level["server_timings_ms"]["engine_ms"] > 0


@pytest.mark.parametrize("args, message", [
    (["--target", "grpc", "--address", "10.1.2.3:50051"], "not a loopback address"),
    (["--target", "openai", "--address", "127.0.0.1:1", "--scenario", "segment"], "cannot send segment"),
    (["--target", "grpc", "--address", "127.0.0.1:1", "--mix", "ask=1"], "only applies to --scenario mixed"),
])
def test_refused_runs_exit_2_without_sending(args, message, tmp_path, capsys):
    if "--scenario" not in args:
        args = [*args, "--scenario", "ask"]
    assert run_harness(*args, "--concurrency", "1", "--requests", "1", "--out", str(tmp_path / "x")) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
