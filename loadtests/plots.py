"""PNG plots of a run: latency against load and throughput against load (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path


def pyplot():
    """matplotlib.pyplot on the headless Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _x(levels: list[dict]) -> tuple[list[float], str]:
    if all(level.get("max_concurrency") is not None for level in levels):
        return [level["max_concurrency"] for level in levels], "concurrency (requests in flight)"
    return [float(level["request_rate"]) for level in levels], "offered load (requests/s, Poisson)"


def _log_x(ax, x: list[float]) -> None:
    if len(x) > 1 and min(x) > 0 and max(x) / min(x) >= 8:
        ax.set_xscale("log", base=2)
    ax.set_xticks(x, [f"{v:g}" for v in x])


def plot_latency(levels: list[dict], path: Path, title: str = "") -> Path:
    """End-to-end p50/p90/p99 (and TTFT p50/p99 when streamed) in ms against the load level."""
    plt = pyplot()
    x, label = _x(levels)
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, name, style in (("median_e2el_ms", "e2e p50", "o-"), ("p90_e2el_ms", "e2e p90", "s--"),
                             ("p99_e2el_ms", "e2e p99", "^:"), ("median_ttft_ms", "TTFT p50", "o-"),
                             ("p99_ttft_ms", "TTFT p99", "^:")):
        values = [level.get(key) for level in levels]
        if any(v is not None for v in values):
            ax.plot(x, [float("nan") if v is None else v for v in values], style, label=name)
    _log_x(ax, x)
    ax.set_xlabel(label)
    ax.set_ylabel("latency (ms)")
    ax.set_title(f"latency — {title}".strip(" —"), fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_throughput(levels: list[dict], path: Path, title: str = "") -> Path:
    """Requests/s (and output tokens/s on a second axis when tokens were generated) against the load level."""
    plt = pyplot()
    x, label = _x(levels)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(x, [level["request_throughput"] for level in levels], "o-", color="tab:blue", label="requests/s")
    ax.plot(x, [level["request_goodput"] for level in levels], "s--", color="tab:green", label="goodput (req/s)")
    ax.set_ylabel("requests/s")
    _log_x(ax, x)
    ax.set_xlabel(label)
    if any(level["output_throughput"] > 0 for level in levels):
        tokens = ax.twinx()
        tokens.plot(x, [level["output_throughput"] for level in levels], "^:", color="tab:orange",
                    label="output tokens/s")
        tokens.set_ylabel("output tokens/s")
        tokens.legend(fontsize=8, loc="lower right")
    ax.set_title(f"throughput — {title}".strip(" —"), fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
