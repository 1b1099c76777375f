"""docs/BENCHMARKS.md and its plots, written from the results of one benchmark run (nothing is typed in by
hand: every figure on the page comes from ``results``)."""

from __future__ import annotations

import json
from pathlib import Path

from loadtests.bench.common import REPO_ROOT

PLOTS = "benchmarks"  # folder beside BENCHMARKS.md for the PNGs and the results JSON


def _relative(path) -> str:
    """``path`` relative to the repository when it lies inside it (docs must not carry this machine's paths)."""
    try:
        return str(Path(path).resolve().relative_to(REPO_ROOT))
    except (TypeError, ValueError):
        return str(path)


def fmt(value, digits: int = 1, suffix: str = "") -> str:
    """A number with ``digits`` decimals, or an en dash when missing."""
    if value is None or (isinstance(value, float) and value != value):
        return "–"
    return f"{value:,.{digits}f}{suffix}"


def ratio_row(name: str, target: str, measured: str, ratio, met: bool | None) -> str:
    """One row of the targets table."""
    verdict = "–" if met is None else ("**met**" if met else "**not met**")
    return f"| {name} | {target} | {measured} | {ratio} | {verdict} |"


def _level(levels: list[dict], concurrency: int) -> dict | None:
    return next((lv for lv in levels if lv.get("max_concurrency") == concurrency), None)


def targets(results: dict) -> tuple[list[str], dict]:
    """The targets table rows and the measured ratios."""
    rows, ratios = [], {}
    vqa = results.get("vqa") or {}
    if "engine" in vqa and "service" in vqa:
        engine, service = vqa["engine"], vqa["service"]
        thr = service["throughput"]["request_throughput"] / engine["request_throughput"]
        ratios["vqa_throughput"] = thr
        rows.append(ratio_row("4a service Ask (gRPC, c=16) vs vLLM `LLM.generate`, throughput", "≥ 0.85× engine",
                              f"{fmt(service['throughput']['request_throughput'], 3)} vs "
                              f"{fmt(engine['request_throughput'], 3)} req/s", f"{thr:.2f}×", thr >= 0.85))
        ttft_service, ttft_engine = service["ttft"].get("median_ttft_ms"), engine.get("median_ttft_ms")
        if ttft_service and ttft_engine:
            ttft = ttft_service / ttft_engine
            ratios["vqa_ttft"] = ttft
            rows.append(ratio_row("4a time to first token at c=1", "≤ 1.2× engine",
                                  f"{fmt(ttft_service)} vs {fmt(ttft_engine)} ms", f"{ttft:.2f}×", ttft <= 1.2))
    if "transformers" in vqa and "engine" in vqa:
        speed = vqa["engine"]["output_throughput"] / vqa["transformers"]["output_throughput"]
        ratios["vllm_vs_transformers"] = speed
        rows.append(ratio_row("4b vLLM vs transformers `generate` (batches of 16), tokens/s", "(comparison)",
                              f"{fmt(vqa['engine']['output_throughput'])} vs "
                              f"{fmt(vqa['transformers']['output_throughput'])} tok/s", f"{speed:.2f}×", None))
    seg = results.get("segmenter") or {}
    if "bare" in seg and "batching_on" in seg:
        bare = seg["bare"]["fp32"]["p50_ms"]
        on1 = _level(seg["batching_on"]["levels"], 1)
        off1 = _level(seg["batching_off"]["levels"], 1) if "batching_off" in seg else None
        if on1:
            added = on1["median_e2el_ms"] - bare
            ratios["segment_added_p50_ms"] = added
            extra = (f"; {fmt(off1['median_e2el_ms'] - bare, 2)} ms with batching off" if off1 else "")
            rows.append(ratio_row("4c Segment through the service vs bare `session.run`, added p50 (c=1)",
                                  "≤ 2 ms", f"{fmt(on1['median_e2el_ms'], 2)} vs {fmt(bare, 2)} ms{extra}",
                                  f"+{added:.2f} ms", added <= 2.0))
        top = max(lv["max_concurrency"] for lv in seg["batching_on"]["levels"])
        on_top = _level(seg["batching_on"]["levels"], top)
        triton = seg.get("triton") or {}
        if "levels" in triton and _level(triton["levels"], top):
            t_top = _level(triton["levels"], top)
            r = on_top["request_throughput"] / t_top["request_throughput"]
            ratios["segment_vs_triton"] = r
            rows.append(ratio_row(f"4c service vs local Triton, throughput at c={top}", "≥ 1.0× Triton",
                                  f"{fmt(on_top['request_throughput'])} vs {fmt(t_top['request_throughput'])} req/s",
                                  f"{r:.2f}×", r >= 1.0))
        if "batching_off" in seg and _level(seg["batching_off"]["levels"], top):
            off_top = _level(seg["batching_off"]["levels"], top)
            r = on_top["request_throughput"] / off_top["request_throughput"]
            ratios["batching_on_vs_off"] = r
            rows.append(ratio_row(f"4c dynamic batching on vs off, throughput at c={top}", "≥ 1.5×",
                                  f"{fmt(on_top['request_throughput'])} vs {fmt(off_top['request_throughput'])} req/s",
                                  f"{r:.2f}×", r >= 1.5))
    return rows, ratios


def _table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def section_vqa(results: dict, plots: Path) -> str:
    """4a, 4b, 4e (VQA) and the MedCLM half of 4d (speed)."""
    vqa = results.get("vqa") or {}
    if "engine" not in vqa:
        return f"\n## 4a / 4b. VQA serving\n\nNot measured in this run: {vqa.get('failed', 'section skipped')}\n"
    model = vqa["model"]
    engine, hf, service = vqa["engine"], vqa["transformers"], vqa["service"]
    thr = service["throughput"]
    text = ["\n## 4a / 4b. VQA serving: the service vs vLLM offline vs a transformers loop\n",
            f"Model: a LLaVA with **random weights**, {model['parameters'] / 1e6:.1f}M parameters "
            f"(text {model['text_parameters'] / 1e6:.1f}M: 10 layers of 768; "
            f"vision {model['vision_parameters'] / 1e6:.1f}M; "
            "128 px, 64 image tokens), built with `training.medclm.model.build_model` and exported with the real "
            "exporter (`loadtests/bench/bench_model.py`). Its EOS logit is pinned to 0, so every request generates "
            f"exactly `max_tokens` = {vqa['max_tokens']} tokens on every engine. "
            f"{vqa['requests']} requests (phantom images and data-engine questions, reasoning prompts), greedy; "
            f"at most {vqa['concurrency']} sequences in flight on every side (service: {vqa['concurrency']} "
            f"closed-loop gRPC callers; vLLM: `max_num_seqs={vqa['concurrency']}`; transformers: static batches "
            f"of {vqa['concurrency']}). vLLM CPU, {engine['engine_args'].get('dtype')}, "
            f"{results['config']['vllm_threads']} threads on both sides.\n"]
    rows = [
        ["vLLM offline `LLM.generate`", fmt(engine["request_throughput"], 3), fmt(engine["output_throughput"]),
         fmt(engine["median_ttft_ms"]), fmt(engine["single_request_ms"], 0), fmt(engine["peak_rss_mb"], 0)],
        [f"service `Ask`, gRPC, c={vqa['concurrency']}", fmt(thr["request_throughput"], 3),
         fmt(thr["output_throughput"]),
         fmt(service["ttft"].get("median_ttft_ms")),
         fmt((service["lengths"].get(str(vqa["max_tokens"])) or service["lengths"].get(vqa["max_tokens"]) or {})
             .get("median_e2el_ms"), 0), fmt(thr.get("server_peak_rss_mb"), 0)],
        [f"transformers `generate`, batches of {vqa['concurrency']}", fmt(hf["request_throughput"], 3),
         fmt(hf["output_throughput"]), fmt(hf["median_ttft_ms"]), fmt(hf["single_request_ms"], 0),
         fmt(hf["peak_rss_mb"], 0)],
    ]
    text.append(_table(["engine", "requests/s", "output tokens/s", "TTFT p50 at c=1 (ms)",
                        f"one request, {vqa['max_tokens']} tokens (ms)", "peak RSS (MB)"], rows))
    text.append(f"\nService p50 / p99 end-to-end at c={vqa['concurrency']}: {fmt(thr['median_e2el_ms'], 0)} / "
                f"{fmt(thr['p99_e2el_ms'], 0)} ms; server CPU {fmt(thr.get('server_cpu_percent'), 0)} % of one core, "
                f"client CPU {fmt(thr.get('client_cpu_percent'), 0)} %. Engine TTFT = `generate` of one request "
                "with `max_tokens=1` (median); service TTFT = first streamed delta of `AskStream` seen by the "
                "client (median). Peak RSS: the engine worker process, or the service's process tree.\n")
    text.append("\n![VQA serving](benchmarks/vqa_serving.png)\n")
    _plot_vqa(vqa, plots / "vqa_serving.png")
    return "\n".join(text)


def section_segmenter(results: dict) -> str:
    """4c: Segment through the service vs bare ONNX Runtime vs Triton, batching on vs off."""
    seg = results.get("segmenter") or {}
    if "bare" not in seg:
        return f"\n## 4c. Segmentation serving\n\nNot measured in this run: {seg.get('failed', 'section skipped')}\n"
    bare = seg["bare"]["fp32"]
    text = ["\n## 4c. Segmentation serving: the service vs bare ONNX Runtime vs Triton, batching on vs off\n",
            f"Inputs: {seg['inputs']}; gRPC `Segment` with RLE masks, closed loop, "
            f"{results['config']['seg_duration']:g} s per level after {results['config']['warmup']} warm-up requests. "
            f"Service defaults: in-process ONNX Runtime, 1 intra-op thread per session, dynamic batching up to 8 "
            "with 2 ms maximum queue delay. Triton: the local `tritonserver` (`service.triton_local`, its "
            "ONNX Runtime backend with 2 threads and the repository's own dynamic batching), called with "
            "tritonclient's asyncio gRPC client on already preprocessed tensors. Bare ONNX Runtime: "
            f"`session.run` on one preprocessed [1,1,256,256] tensor, {bare['threads_b1']} thread (the "
            "service's setting), p50 over repeated calls.\n"]
    rows = [["bare `session.run` (batch 1)", "–", fmt(bare["p50_ms"], 2), fmt(bare["p99_ms"], 2),
             fmt(1000 / bare["p50_ms"]), "–", "–"]]
    series = [("service, batching on", seg["batching_on"]["levels"]),
              ("service, batching off", (seg.get("batching_off") or {}).get("levels", [])),
              ("Triton", (seg.get("triton") or {}).get("levels", []))]
    for name, levels in series:
        for lv in levels:
            rows.append([name, str(lv["max_concurrency"]), fmt(lv["median_e2el_ms"], 2), fmt(lv["p99_e2el_ms"], 2),
                         fmt(lv["request_throughput"]), fmt(lv.get("server_cpu_percent"), 0),
                         fmt(lv.get("server_peak_rss_mb"), 0)])
    text.append(_table(["target", "concurrency", "p50 (ms)", "p99 (ms)", "requests/s", "server CPU (% of a core)",
                        "server peak RSS (MB)"], rows))
    on1 = _level(seg["batching_on"]["levels"], 1)
    if on1 and on1.get("server_timings_ms"):
        t = on1["server_timings_ms"]
        text.append(f"\nWhere a c=1 request's {fmt(on1['mean_e2el_ms'], 2)} ms go (service's own timings, means): "
                    f"queue {fmt(t.get('queue_ms'), 2)} ms, "
                    f"decode + preprocessing {fmt(t.get('preprocess_ms'), 2)} ms, "
                    f"engine (batch wait + `session.run` + mask restoration) {fmt(t.get('engine_ms'), 2)} ms, "
                    f"server total {fmt(t.get('total_ms'), 2)} ms; the rest "
                    f"({fmt(on1['mean_e2el_ms'] - t.get('total_ms', 0), 2)} ms) is gRPC, encoding and the client.\n")
    parts = seg.get("pipeline_parts")
    if parts:
        text.append(f"\nThe same steps in process, without transport or batching (p50, fp32 CT, "
                    f"{bare['threads_b1']} thread): decode {fmt(parts['decode_ms'], 2)} ms, window + letterbox "
                    f"{fmt(parts['preprocess_ms'], 2)} ms, `session.run` {fmt(parts['run_ms'], 2)} ms, mask "
                    f"restoration at the original size {fmt(parts['restore_ms'], 2)} ms; sum "
                    f"{fmt(parts['sum_ms'], 2)} ms. Of the service's added p50 at c=1 "
                    f"({fmt(on1['median_e2el_ms'] - bare['p50_ms'], 2) if on1 else '–'} ms), the work it must do "
                    f"beyond `session.run` is {fmt(parts['sum_ms'] - parts['run_ms'], 2)} ms; the rest is the thread "
                    "hand-offs around the batcher, the batch delay, gRPC, protobuf and RLE encoding, and the client. "
                    "Triton is given already preprocessed tensors and returns probabilities: the decoding, "
                    "letterboxing, mask restoration and encoding the service does for each request are not in "
                    "Triton's figures, and a client of Triton would do them itself.\n")
    if (seg.get("triton") or {}).get("skipped"):
        text.append(f"\nTriton was not measured: {seg['triton']['skipped']}\n")
    text.append("\n![segmentation serving](benchmarks/segment_serving.png)\n")
    return "\n".join(text)


def section_precision(results: dict) -> str:
    """4d: segmenter and MedCLM precision variants."""
    seg, vqa, acc = results.get("segmenter") or {}, results.get("vqa") or {}, results.get("accuracy") or {}
    text = ["\n## 4d. Precision variants\n"]
    if "bare" in seg:
        text.append("### Organ segmenter (CT model for speed; Dice on both modalities' held-out phantoms)\n")
        rows = []
        for variant, bare in seg["bare"].items():
            acc_v = (seg.get("accuracy") or {}).get(variant, {})
            levels = (seg["batching_on"].get("variants") or {}).get(variant, [])
            c1 = _level(levels, 1)
            ctop = max(levels, key=lambda lv: lv["max_concurrency"]) if levels else None
            rows.append([variant, fmt((acc_v.get("ct") or {}).get("mean_dice"), 4),
                         fmt((acc_v.get("cxr") or {}).get("mean_dice"), 4),
                         fmt((acc_v.get("ct") or {}).get("mean_hd95_mm"), 2), fmt(bare["size_mb"], 2),
                         fmt(bare["p50_ms"], 2), fmt(bare["images_per_s_b8_2threads"]),
                         fmt(c1["median_e2el_ms"], 2) if c1 else "–",
                         (f"{fmt(ctop['request_throughput'])} (c={ctop['max_concurrency']})" if ctop else "–"),
                         fmt(bare["rss_growth_mb"], 1)])
        text.append(_table(["variant", "mean Dice CT", "mean Dice CXR", "HD95 CT (mm)", "size (MB)",
                            "bare p50 b1 (ms)", "bare img/s b8, 2 threads", "service p50 c=1 (ms)",
                            "service req/s", "RSS added by a session (MB)"], rows))
        if not seg.get("accuracy"):
            text.append("\nDice not re-measured in this run (`seg_accuracy=false`).\n")
    if "variants" in vqa:
        text.append(f"\n### MedCLM: speed on the random-weight {vqa['model']['parameters'] / 1e6:.0f}M model "
                    f"({vqa.get('variants_requests')} requests x {vqa['max_tokens']} tokens, vLLM CPU, "
                    f"at most {vqa['concurrency']} in flight)\n")
        rows = []
        for precision, r in vqa["variants"].items():
            if "failed" in r:
                rows.append([precision, "failed", "–", "–", "–", "–", "–"])
                continue
            rows.append([precision, str((vqa["model"].get("sizes_mb") or {}).get(precision, "–")),
                         fmt(r["request_throughput"], 3), fmt(r["output_throughput"]), fmt(r["median_ttft_ms"]),
                         fmt(r["single_request_ms"], 0), fmt(r["peak_rss_mb"], 0)])
        text.append(_table(["precision", "weights (MB)", "requests/s", "output tokens/s", "TTFT p50 (ms)",
                            f"one request, {vqa['max_tokens']} tokens (ms)", "peak RSS (MB)"], rows))
        text.append("\nbf16 runs with bf16 compute; this CPU (AVX2, no AVX512-BF16/AMX) has no native bf16 "
                    "arithmetic. int8 is W8A8 (compressed-tensors, per-channel int8 weights, per-token int8 "
                    "activations) on the text model's linear layers.\n")
    if acc.get("rows"):
        text.append(f"\n### MedCLM: accuracy of the trained default per precision\n\n"
                    f"From the evaluation script: `{acc['command']}` on {acc['records']} prompts of `{acc['data']}` "
                    f"({acc['split']} split), greedy, up to {acc['max_new_tokens']} new tokens. Checkpoint: "
                    f"`{_relative(acc['checkpoint'].get('source'))}` (stage {acc['checkpoint'].get('stage')}, preset "
                    f"{acc['checkpoint'].get('preset')}).\n")
        rows = []
        for r in acc["rows"]:
            rows.append([r["model"], r["dtype"] + (f" + {r['quantization']}" if r.get("quantization") else ""),
                         fmt(r["size_mb"], 2), fmt(r["reasoning"].get("accuracy"), 3),
                         fmt(r["reasoning"].get("grounding_acc@0.5"), 3), fmt(r["reasoning"].get("format_validity"), 3),
                         fmt(r["brief"].get("accuracy"), 3), r["agreement_with_fp32"]["identical"],
                         fmt(r["batch_tokens_per_second"])])
        text.append(_table(["model", "dtype", "size (MB)", "accuracy (reasoning)", "Acc@0.5", "format valid",
                            "accuracy (brief)", "identical to fp32", "tok/s batched"], rows))
    elif acc.get("failed"):
        text.append(f"\nAccuracy per precision was not measured: {acc['failed']}\n")
    text.append("\n![precision variants](benchmarks/precision.png)\n")
    return "\n".join(text)


def section_scaling(results: dict) -> str:
    """4e: segmenter latency vs image side, VQA latency vs output length."""
    seg, vqa = results.get("segmenter") or {}, results.get("vqa") or {}
    text = ["\n## 4e. How cost grows\n"]
    sides = (seg.get("batching_on") or {}).get("sides") or {}
    if sides:
        text.append("### Segmentation latency against image side (service, gRPC, c=1)\n\nThe network always "
                    "runs at 256 x 256 (the service letterboxes); what grows with the side is decoding, "
                    "resizing and restoring the masks at the original size.\n")
        rows = []
        for side, lv in sorted(sides.items(), key=lambda kv: int(kv[0])):
            t = lv.get("server_timings_ms") or {}
            rows.append([f"{side} x {side}", fmt(lv["median_e2el_ms"], 2), fmt(lv["p99_e2el_ms"], 2),
                         fmt(t.get("preprocess_ms"), 2), fmt(t.get("engine_ms"), 2), fmt(t.get("total_ms"), 2)])
        text.append(_table(["image", "p50 (ms)", "p99 (ms)", "server decode + preprocess (ms)",
                            "server engine (ms)", "server total (ms)"], rows))
    lengths = (vqa.get("service") or {}).get("lengths") or {}
    if lengths:
        text.append(f"\n### VQA latency against output length (service `AskStream`, gRPC, c=1, random-weight "
                    f"{vqa['model']['parameters'] / 1e6:.0f}M model)\n")
        rows = []
        for tokens, lv in sorted(lengths.items(), key=lambda kv: int(kv[0])):
            rows.append([str(tokens), fmt(lv["median_e2el_ms"], 0), fmt(lv["median_ttft_ms"]),
                         fmt(lv["median_tpot_ms"], 2), fmt(lv["output_throughput"])])
        text.append(_table(["output tokens", "e2e p50 (ms)", "TTFT p50 (ms)", "TPOT p50 (ms/token)",
                            "tokens/s"], rows))
    text.append("\n![scaling](benchmarks/scaling.png)\n")
    return "\n".join(text)


def section_flops(results: dict) -> str:
    """4f: achieved GFLOP/s of the segmenter against the CPU's peak estimate."""
    seg = results.get("segmenter") or {}
    if "flops" not in seg:
        return ""
    flops, peak, bare = seg["flops"], seg["peak"], seg["bare"]["fp32"]
    gflop = flops["total_flops"] / 1e9
    text = ["\n## 4f. Segmenter arithmetic throughput against this CPU's peak\n",
            f"FLOPs per 256 x 256 image, counted from the ONNX graph after shape inference "
            f"(`loadtests/bench/flops.py`): **{gflop:.3f} GFLOP** "
            f"({flops['matmul_flops'] / 1e9:.3f} in convolutions at 2 FLOPs per multiply-add, "
            f"{flops['elementwise_flops'] / 1e6:.1f} MFLOP element-wise).\n",
            f"Peak estimate: {peak['cores']} cores x {peak['clock_ghz']} GHz ({peak['clock_source']}) x "
            f"{peak['flops_per_cycle_per_core']} fp32 FLOPs/cycle ({peak['vector_unit']}, from the CPU flags) = "
            f"**{peak['peak_gflops']} GFLOP/s** ({peak['peak_gflops_one_core']} per core). {peak['cpu']}; turbo "
            "clocks above the reported frequency would raise the true ceiling.\n"]
    rows = []

    def add(name: str, images_per_s: float | None, ceiling: float) -> None:
        if images_per_s:
            achieved = images_per_s * gflop
            rows.append([name, fmt(images_per_s), fmt(achieved), fmt(ceiling), fmt(100 * achieved / ceiling, 1, " %")])

    add("bare `session.run`, batch 1, 1 thread", 1000 / bare["p50_ms"], peak["peak_gflops_one_core"])
    add("bare `session.run`, batch 8, 1 thread", bare["images_per_s_b8_1thread"], peak["peak_gflops_one_core"])
    add("bare `session.run`, batch 8, 2 threads", bare["images_per_s_b8_2threads"], peak["peak_gflops"])
    levels = (seg.get("batching_on") or {}).get("levels") or []
    if levels:
        top = max(levels, key=lambda lv: lv["max_concurrency"])
        add(f"service, batching on, c={top['max_concurrency']} (whole machine)", top["request_throughput"],
            peak["peak_gflops"])
    text.append(_table(["what", "images/s", "achieved GFLOP/s", "peak GFLOP/s", "share of peak"], rows))
    return "\n".join(text)


def render(results: dict, docs: Path) -> Path:
    """Write ``docs/BENCHMARKS.md``, ``docs/benchmarks/*.png`` and ``docs/benchmarks/results.json``."""
    docs = Path(docs)
    plots = docs / PLOTS
    plots.mkdir(parents=True, exist_ok=True)
    rows, ratios = targets(results)
    results["ratios"] = ratios
    machine = results["machine"]
    head = [
        "# Benchmarks\n",
        "Regenerate everything on this page (tables, plots, `benchmarks/results.json`) with\n",
        f"```bash\nmake bench            # = {results['command']}\n```\n",
        "Sizes and durations are options (`make bench BENCH_ARGS=\"--vqa_requests=64 --seg_duration=20\"`, "
        "`--quick` for a few-minute smoke run, `--sections=segmenter` for one part); every load run's "
        "perf_analyzer-style CSV, vLLM-style JSON and plots stay in `runs/bench/runs/<name>/`.\n",
        f"Measured {results['started']} in {results['minutes']:.1f} min on {machine['cpu']} "
        f"({machine['cores']} cores, {machine['clock_ghz']} GHz, {machine['vector_unit'].split(':')[0]}), "
        f"load average {results['load_average_start']} at the start and {results.get('load_average_end')} at the "
        f"end. {_shared_machine_warning(results)}Versions: "
        + ", ".join(f"{k} {v}" for k, v in results["versions"].items()) + ". Each comparison below was measured "
        "side by side in this one run, one engine at a time.\n",
        _section_runs(results),
        "## Targets\n",
        "| target | goal | measured | ratio | verdict |\n|---|---|---|---|---|",
        *rows, "",
    ]
    body = [section_vqa(results, plots), section_segmenter(results), section_precision(results),
            section_scaling(results), section_flops(results)]
    _plot_segment(results, plots / "segment_serving.png")
    _plot_precision(results, plots / "precision.png")
    _plot_scaling(results, plots / "scaling.png")
    page = "\n".join(head) + "\n".join(body) + _notes(results)
    path = docs / "BENCHMARKS.md"
    path.write_text(page)
    (plots / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    return path


def _shared_machine_warning(results: dict) -> str:
    """A warning when other work loaded the machine as a measurement began (1-minute load average above 1.0
    at the start of the run or of a section measured in a separate ``--merge`` run). Averages taken later
    include the benchmark's own load, which saturates both cores by design, so they say nothing about others."""
    starts = [results.get("load_average_start")]
    starts += [run.get("load_average_start") for run in (results.get("section_runs") or {}).values()
               if run.get("first_in_run")]
    first = [float(text.split(",")[0]) for text in starts if text]
    if not first or max(first) <= 1.0:
        return ""
    return (f"**The machine was busy when a measurement began** (1-minute load average {max(first):.1f} on 2 "
            "cores, from other jobs): absolute figures may be lower than on an idle machine and ratios noisier. ")


def _section_runs(results: dict) -> str:
    """When and under what load each section was measured (sections may come from separate ``--merge`` runs)."""
    runs = results.get("section_runs") or {}
    if not runs:
        return ""
    parts = [f"{name}: {run.get('started')}, {fmt(run.get('minutes'))} min, load average "
             f"{run.get('load_average_start')} → {run.get('load_average_end', '–')}" for name, run in runs.items()]
    return "Sections: " + "; ".join(parts) + ".\n"


def _notes(results: dict) -> str:
    return ("\n## How to read these numbers\n\n"
            "- All clients run on the same 2-core machine as the servers; the client's own CPU is reported with "
            "each load level in the run folders.\n"
            "- The VQA model has random weights: its text is meaningless, but its arithmetic per token is that of a "
            f"{(results.get('vqa') or {}).get('model', {}).get('parameters', 0) / 1e6:.0f}M-parameter LLaVA, which is "
            "what serving speed depends on. Accuracy figures come from the trained default instead.\n"
            "- Configuration of this run: `" + json.dumps(results["config"]) + "`.\n")


# --- plots --------------------------------------------------------------------------------------------------

def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plot_vqa(vqa: dict, path: Path) -> None:
    plt = pyplot()
    names = ["vLLM offline", "service gRPC", "transformers"]
    sources = [vqa["engine"], vqa["service"]["throughput"], vqa["transformers"]]
    ttfts = [vqa["engine"]["median_ttft_ms"], vqa["service"]["ttft"].get("median_ttft_ms"),
             vqa["transformers"]["median_ttft_ms"]]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.bar(names, [s["output_throughput"] for s in sources], color=["tab:blue", "tab:green", "tab:gray"])
    ax1.set_title(f"output tokens/s, {vqa['requests']} requests, <= {vqa['concurrency']} in flight", fontsize=10)
    ax2.bar(names, [t or 0 for t in ttfts], color=["tab:blue", "tab:green", "tab:gray"])
    ax2.set_title("time to first token at concurrency 1 (ms, p50)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_segment(results: dict, path: Path) -> None:
    seg = results.get("segmenter") or {}
    if "batching_on" not in seg:
        return
    plt = pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for name, levels, style in (("service, batching on", seg["batching_on"]["levels"], "o-"),
                                ("service, batching off", (seg.get("batching_off") or {}).get("levels", []), "s--"),
                                ("Triton", (seg.get("triton") or {}).get("levels", []), "^:")):
        if not levels:
            continue
        x = [lv["max_concurrency"] for lv in levels]
        ax1.plot(x, [lv["request_throughput"] for lv in levels], style, label=name)
        ax2.plot(x, [lv["median_e2el_ms"] for lv in levels], style, label=name)
    ax2.axhline(seg["bare"]["fp32"]["p50_ms"], color="gray", lw=0.8, label="bare session.run p50 (b1)")
    ticks = sorted({lv["max_concurrency"] for lv in seg["batching_on"]["levels"]})
    for ax, title in ((ax1, "Segment throughput (requests/s)"), (ax2, "Segment p50 latency (ms)")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.set_xlabel("concurrency")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_precision(results: dict, path: Path) -> None:
    plt = pyplot()
    seg, vqa, acc = results.get("segmenter") or {}, results.get("vqa") or {}, results.get("accuracy") or {}
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    if "bare" in seg:
        variants = list(seg["bare"])
        axes[0].bar(variants, [seg["bare"][v]["images_per_s_b8_2threads"] for v in variants])
        axes[0].set_title("segmenter img/s (bare ORT, b8, 2 threads)", fontsize=10)
    if "variants" in vqa:
        names = [p for p, r in vqa["variants"].items() if "failed" not in r]
        axes[1].bar(names, [vqa["variants"][p]["output_throughput"] for p in names])
        axes[1].set_title("MedCLM output tokens/s (random 80M, vLLM)", fontsize=10)
    if acc.get("rows"):
        axes[2].bar([r["model"] for r in acc["rows"]], [r["reasoning"].get("accuracy") or 0 for r in acc["rows"]])
        axes[2].set_ylim(0, 1)
        axes[2].set_title("MedCLM accuracy, reasoning prompts (trained default)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_scaling(results: dict, path: Path) -> None:
    plt = pyplot()
    seg, vqa = results.get("segmenter") or {}, results.get("vqa") or {}
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    sides = (seg.get("batching_on") or {}).get("sides") or {}
    if sides:
        items = sorted(sides.items(), key=lambda kv: int(kv[0]))
        ax1.plot([int(k) for k, _ in items], [lv["median_e2el_ms"] for _, lv in items], "o-", label="e2e p50")
        ax1.plot([int(k) for k, _ in items], [(lv.get("server_timings_ms") or {}).get("engine_ms") for _, lv in items],
                 "s--", label="server engine")
        ax1.set_xlabel("image side (px)")
        ax1.set_ylabel("ms")
        ax1.set_title("Segment latency vs image side (c=1)", fontsize=10)
        ax1.legend(fontsize=8)
        ax1.grid(alpha=0.3)
    lengths = (vqa.get("service") or {}).get("lengths") or {}
    if lengths:
        items = sorted(lengths.items(), key=lambda kv: int(kv[0]))
        ax2.plot([int(k) for k, _ in items], [lv["median_e2el_ms"] for _, lv in items], "o-", label="e2e p50")
        ax2.plot([int(k) for k, _ in items], [lv["median_ttft_ms"] for _, lv in items], "s--", label="TTFT p50")
        ax2.set_xlabel("output tokens")
        ax2.set_ylabel("ms")
        ax2.set_title("VQA latency vs output length (c=1)", fontsize=10)
        ax2.legend(fontsize=8)
        ax2.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
