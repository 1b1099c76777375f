"""``python -m training.medclm bench``: fp32 / bf16 / int8 models of a repository side by side in vLLM.

For each precision variant present (``medclm``, ``medclm_bf16``, ``medclm_int8``): the evaluation figures on
the same records, batched generation throughput, single-request decode speed, and greedy agreement with the
fp32 model. The fp32 model is also checked token for token against transformers on its stored weights.
Writes JSON, a markdown table (for docs/medclm.md) and a PNG.
"""

from __future__ import annotations

import gc
import json
import platform
from pathlib import Path

from training.medclm.checkpoint import read_meta
from training.medclm.engines import TransformersGenerator, VllmGenerator, record_requests
from training.medclm.errors import MedCLMError
from training.medclm.eval_report import build_report, load_eval_records
from training.medclm.export import PRECISIONS, model_name, read_engine_args

PARITY_PROMPTS = 4  # transformers at batch 1 is slow; a few prompts show whether fp32 serving is exact


def _agreement(ids: list[list[int]], reference: list[list[int]]) -> dict:
    """Share of identical sequences and mean position of the first differing token (length if none)."""
    first = []
    for a, b in zip(ids, reference):
        first.append(next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b))))
    same = sum(a == b for a, b in zip(ids, reference))
    return {"identical": f"{same}/{len(reference)}", "mean_first_divergence": round(sum(first) / len(first), 1)}


def bench_variant(folder: Path, records, data: Path, threads: int, max_new_tokens: int) -> tuple[dict, list]:
    """Load one model folder in vLLM, evaluate it and time it; returns (row, generations)."""
    args = read_engine_args(folder)
    engine = VllmGenerator(Path(args["model"]), dtype=args["dtype"], quantization=args.get("quantization"),
                           max_model_len=args["max_model_len"], threads=threads)
    try:
        requests = record_requests(engine.tokenizer, data, records)
        generations = engine.generate(requests, max_new_tokens)
        batch_seconds = engine.last_seconds
        single = engine.generate(requests[:1], max_new_tokens)
        single_rate = len(single[0].token_ids) / engine.last_seconds
    finally:
        engine.close()
        gc.collect()
    meta = read_meta(Path(args["model"]))
    report = build_report(Path(args["model"]), meta, records, generations, batch_seconds, engine="vllm",
                          dtype=args["dtype"], quantization=args.get("quantization"), max_new_tokens=max_new_tokens)
    weights = Path(args["model"]) / "model.safetensors"
    row = {"model": folder.name, "precision": meta["export"]["precision"], "dtype": args["dtype"],
           "quantization": args.get("quantization"), "size_mb": round(weights.stat().st_size / 1e6, 2),
           "batch_tokens_per_second": report["timing"]["tokens_per_second"],
           "single_request_tokens_per_second": round(single_rate, 1),
           "generated_tokens": report["timing"]["generated_tokens"], "requests": len(records),
           "reasoning": report["reasoning"]["overall"], "brief": report["brief"]["overall"]}
    return row, generations


def run_bench(repository: Path, data: Path, name: str = "medclm", split: str = "test", limit: int = 16,
              threads: int = 1, out: Path | None = None) -> dict:
    """Benchmark every precision variant of ``name`` in ``repository``; writes OUT.json/.md/.png if given."""
    folders = [Path(repository) / model_name(name, p) for p in PRECISIONS]
    folders = [f for f in folders if (f / "1" / "model.json").is_file()]
    if not folders or folders[0].name != name:
        raise MedCLMError(f"{repository} has no {name} (fp32) model; run python -m training.medclm export first")
    records = load_eval_records(data, split, limit)
    fp32_checkpoint = Path(read_engine_args(folders[0])["model"])
    max_new_tokens = read_meta(fp32_checkpoint)["config"]["max_new_tokens"]
    rows, reference = [], None
    for folder in folders:
        row, generations = bench_variant(folder, records, data, threads, max_new_tokens)
        ids = [g.token_ids for g in generations]
        reference = reference or ids
        row["agreement_with_fp32"] = _agreement(ids, reference)
        rows.append(row)
        print(f"{row['model']}: {row['batch_tokens_per_second']} tok/s batched, "
              f"{row['single_request_tokens_per_second']} tok/s single, {row['agreement_with_fp32']}", flush=True)
    hf = TransformersGenerator(fp32_checkpoint, dtype="float32", threads=threads, batch_size=1)
    hf_ids = [g.token_ids for g in hf.generate(record_requests(hf.tokenizer, data, records[:PARITY_PROMPTS]),
                                               max_new_tokens)]
    rows[0]["transformers_parity"] = _agreement(reference[:PARITY_PROMPTS], hf_ids)
    result = {"machine": f"{platform.machine()} {platform.processor() or ''}".strip(), "threads": threads,
              "split": split, "records": len(records), "max_new_tokens": max_new_tokens, "rows": rows}
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
        out.with_suffix(".md").write_text(render_table(result))
        plot(rows, out.with_suffix(".png"))
        result["written"] = [str(out.with_suffix(s)) for s in (".json", ".md", ".png")]
    return result


def _fmt(value) -> str:
    return "–" if value is None else f"{value:.3f}"


def render_table(result: dict) -> str:
    """Markdown table of :func:`run_bench` rows."""
    head = ("| model | dtype / quantization | size (MB) | tok/s batched | tok/s single request | identical to fp32 "
            "| accuracy (reasoning) | Acc@0.5 | format valid | accuracy (Hard-style) |\n"
            "|---|---|---|---|---|---|---|---|---|---|\n")
    lines = []
    for r in result["rows"]:
        kind = r["dtype"] + (f" + {r['quantization']} W8A8" if r["quantization"] else "")
        lines.append(f"| {r['model']} | {kind} | {r['size_mb']} | {r['batch_tokens_per_second']} | "
                     f"{r['single_request_tokens_per_second']} | {r['agreement_with_fp32']['identical']} | "
                     f"{_fmt(r['reasoning']['accuracy'])} | {_fmt(r['reasoning']['grounding_acc@0.5'])} | "
                     f"{_fmt(r['reasoning']['format_validity'])} | {_fmt(r['brief']['accuracy'])} |")
    parity = result["rows"][0].get("transformers_parity", {})
    return (head + "\n".join(lines) + "\n\n"
            f"{result['records']} prompts ({result['split']} split, Medium records and their Hard twins), greedy, "
            f"up to {result['max_new_tokens']} new tokens, vLLM CPU, {result['threads']} thread(s). "
            f"fp32 vLLM vs transformers fp32 on the same stored weights: {parity.get('identical', '–')} "
            "identical sequences.\n")


def plot(rows: list[dict], path: Path) -> Path:
    """Bar charts: batched and single-request tokens/s, and reasoning accuracy, per variant."""
    import matplotlib

    matplotlib.use("Agg")  # headless
    import matplotlib.pyplot as plt

    fig, (ax_speed, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    names = [r["model"] for r in rows]
    x = range(len(rows))
    ax_speed.bar([i - 0.2 for i in x], [r["batch_tokens_per_second"] for r in rows], 0.4, label="batched")
    ax_speed.bar([i + 0.2 for i in x], [r["single_request_tokens_per_second"] for r in rows], 0.4, label="single")
    ax_speed.set_xticks(list(x), names)
    ax_speed.set_title("generated tokens/s (vLLM CPU)", fontsize=10)
    ax_speed.legend(fontsize=8)
    ax_acc.bar(list(x), [r["reasoning"]["accuracy"] or 0 for r in rows])
    ax_acc.set_xticks(list(x), names)
    ax_acc.set_ylim(0, 1)
    ax_acc.set_title("accuracy, reasoning prompts", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
