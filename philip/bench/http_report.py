"""The report of `philip bench http`: medians, ratios against their goals, the run's parameters, a table."""

from __future__ import annotations

import os
import platform
import statistics
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import numpy as np
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from philip.bench.http_api import HttpBenchConfig, ViewersRun

# Goals from the issue: a ratio is "met" when it is at most this; sse_viewers_final must equal viewers.
GOALS: dict[str, float] = {"http_overhead": 1.05, "first_preview_ratio": 1.1}


def max_pixel_diff(a: list[np.ndarray], b: list[np.ndarray]) -> int:
    """Largest absolute 8-bit difference between two equally long image lists."""
    return max(int(np.abs(x.astype(np.int16) - y.astype(np.int16)).max()) for x, y in zip(a, b, strict=True))


def machine_info(threads: int) -> dict[str, Any]:
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cores": os.cpu_count(), "usable_cores": affinity, "server_threads": threads,
            "platform": platform.platform(), "python": platform.python_version()}


def summarize(cfg: HttpBenchConfig, *, http_s: list[float], grpc_s: list[float], http_preview_s: list[float],
              grpc_preview_s: list[float], viewers: ViewersRun, max_pixel_diff: int) -> dict[str, Any]:
    """Medians, ratios, goals and the run's parameters (one JSON-ready object)."""
    med = statistics.median
    http_gen, grpc_gen = med(http_s), med(grpc_s)
    http_first, grpc_first = med(http_preview_s), med(grpc_preview_s)
    result: dict[str, Any] = {
        "http_overhead": round(http_gen / grpc_gen, 4),
        "http_generate_s": round(http_gen, 4),
        "grpc_generate_s": round(grpc_gen, 4),
        "max_pixel_diff": max_pixel_diff,
        "first_preview_ratio": round(http_first / grpc_first, 4),
        "http_first_preview_s": round(http_first, 4),
        "grpc_first_preview_s": round(grpc_first, 4),
        "sse_viewers": viewers.viewers,
        "sse_viewers_final": viewers.received_final,
        "sse_rss_before_mb": round(viewers.rss_before_mb, 1),
        "sse_rss_peak_mb": round(viewers.rss_peak_mb, 1),
        "sse_rss_growth_mb": round(viewers.rss_peak_mb - viewers.rss_before_mb, 1),
        "sse_wall_s": round(viewers.wall_s, 2),
        "sse_events_per_viewer": [viewers.events_min, viewers.events_max],
        "sse_errors": viewers.errors,
    }
    goals: dict[str, Any] = {"http_overhead": f"<= {GOALS['http_overhead']}",
                             "first_preview_ratio": f"<= {GOALS['first_preview_ratio']}",
                             "sse_viewers_final": f"== {viewers.viewers}"}
    met = {
        "http_overhead": result["http_overhead"] <= GOALS["http_overhead"],
        "first_preview_ratio": result["first_preview_ratio"] <= GOALS["first_preview_ratio"],
        "sse_viewers_final": viewers.received_final == viewers.viewers,
    }
    params = asdict(cfg)
    params["model_dir"] = str(cfg.model_dir)
    for key in ("port", "http_port", "startup_timeout_s", "call_timeout_s"):
        params.pop(key)
    samples = {"http_generate_s": [round(s, 4) for s in http_s], "grpc_generate_s": [round(s, 4) for s in grpc_s],
               "http_first_preview_s": [round(s, 4) for s in http_preview_s],
               "grpc_first_preview_s": [round(s, 4) for s in grpc_preview_s]}
    return {**result, "goals": goals, "met": met, "all_met": all(met.values()), "params": params,
            "machine": machine_info(cfg.threads), "samples": samples}


def render_table(result: dict[str, Any], console: Console) -> None:
    """The headline numbers with their goals, for people (the JSON is for machines)."""
    p = result["params"]
    table = Table(title=f"philip bench http ({p['images']} images, {p['steps']} steps, {p['size']} px, "
                        f"previews every {p['preview_every']}, median of {p['repeats']}, "
                        f"{result['machine']['cores']} cores)")
    for column, justify in (("metric", "left"), ("value", "right"), ("goal", "right"), ("met", "center")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    rows = ("http_overhead", "http_generate_s", "grpc_generate_s", "max_pixel_diff", "first_preview_ratio",
            "http_first_preview_s", "grpc_first_preview_s", "sse_viewers", "sse_viewers_final",
            "sse_rss_growth_mb", "sse_wall_s")
    for key in rows:
        value = result[key]
        shown = f"{value:.4f}" if isinstance(value, float) else str(value)
        met = result["met"].get(key)
        table.add_row(key, shown, result["goals"].get(key, ""),
                      "" if met is None else ("[green]yes[/green]" if met else "[red]no[/red]"))
    console.print(table)
