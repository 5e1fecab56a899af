"""Medians over rounds, ratios and the markdown table of a comparison.

A ratio is the median of the per-round ratios (ours and vLLM of the same round, measured minutes
apart), which cancels drift on a shared machine better than a ratio of medians would.
"""

from __future__ import annotations

import statistics
from typing import Any

# (label in the table, key in a summary)
METRICS: tuple[tuple[str, str], ...] = (
    ("output tok/s", "output_throughput"),
    ("requests/s", "request_throughput"),
    ("TTFT p50 ms", "median_ttft_ms"),
    ("TTFT p99 ms", "p99_ttft_ms"),
    ("TPOT p50 ms", "median_tpot_ms"),
    ("ITL p50 ms", "median_itl_ms"),
    ("E2E p50 ms", "median_e2el_ms"),
    ("front-end CPU us/token", "front_end_cpu_us_per_token"),
)
OFFLINE_GOAL = (64, 0.85)  # ours / offline output tok/s at this concurrency (vllm processor)
GENERATE_GOAL = (1, 2.0)  # ours / generate() output tok/s at one stream (transformers processor)


def goal(key: str, level: int, processor: str = "vllm") -> tuple[str, float] | None:
    """The goals for ours/vLLM. The vllm processor: higher throughput, TTFT no more than 10 %
    longer. The transformers processor (our engine): at least vLLM's throughput, and no longer
    a TTFT at 64 streams."""
    if processor == "transformers":
        if key == "output_throughput":
            return (">=", 1.0)
        if key == "median_ttft_ms" and level >= 64:
            return ("<=", 1.0)
        return None
    if key == "output_throughput":
        return (">=", 1.15 if level >= 64 else 1.0)
    if key == "median_ttft_ms":
        return ("<=", 1.1)
    return None


def medians(runs: list[dict[str, Any]], other: str = "vllm") -> dict[str, Any]:
    """Per level: each server's medians, and the paired ratios of ours over `other` (vLLM's
    server, or a baseline checkout of the runtime) and over the offline engine."""
    by: dict[tuple[str, int, int], dict] = {}
    for run in runs:
        by[(run["server"], run["level"], run["round"])] = run["summary"]
    levels = sorted({level for _, level, _ in by})
    rounds = sorted({r for _, _, r in by})
    table: dict[str, Any] = {}
    for level in levels:
        row: dict[str, Any] = {}
        for server in ("ours", other, "offline", "generate"):
            summaries = [by[(server, level, r)] for r in rounds if (server, level, r) in by]
            if summaries:
                keys = [k for k in summaries[0] if isinstance(summaries[0][k], int | float)]
                row[server] = {k: statistics.median(s[k] for s in summaries) for k in keys}
        row["ours_over_other"] = _paired(by, level, rounds, "ours", other)
        row["ours_over_offline"] = _paired(by, level, rounds, "ours", "offline")
        row["other_over_offline"] = _paired(by, level, rounds, other, "offline")
        row["ours_over_generate"] = _paired(by, level, rounds, "ours", "generate")
        row["other"] = row.get(other, {})
        table[str(level)] = row
    return table


def _paired(by: dict, level: int, rounds: list[int], a: str, b: str) -> dict[str, float]:
    ratios: dict[str, list[float]] = {}
    for r in rounds:
        x, y = by.get((a, level, r)), by.get((b, level, r))
        if x is None or y is None:
            continue
        for key, value in x.items():
            other = y.get(key)
            if isinstance(value, int | float) and isinstance(other, int | float) and other:
                ratios.setdefault(key, []).append(value / other)
    return {key: statistics.median(values) for key, values in ratios.items()}


def markdown_table(
    table: dict[str, Any], levels: list[int], other: str = "vLLM server", processor: str = "vllm"
) -> str:
    """The table; the goals are the issue's goals against vLLM's server for the processor ours
    serves with, so a comparison with another contender (a baseline checkout) shows none."""
    with_goals = other == "vLLM server"
    lines = [
        f"| c | metric | ours | {other} | ours/{other.split()[0]} | goal |",
        "|---:|---|---:|---:|---:|---|",
    ]
    for level in levels:
        row = table.get(str(level), {})
        for label, key in METRICS:
            ours = row.get("ours", {}).get(key)
            theirs = row.get("other", {}).get(key)
            ratio = row.get("ours_over_other", {}).get(key)
            lines.append(
                f"| {level} | {label} | {_num(ours)} | {_num(theirs)} | {_ratio(ratio)} | "
                f"{_goal_cell(goal(key, level, processor) if with_goals else None, ratio)} |"
            )
    lines += [
        "",
        f"| c | offline tok/s | ours/offline | {other.split()[0]}/offline | goal |",
        "|---:|---:|---:|---:|---|",
    ]
    for level in levels:
        row = table.get(str(level), {})
        offline = row.get("offline", {}).get("output_throughput")
        ours = row.get("ours_over_offline", {}).get("output_throughput")
        theirs = row.get("other_over_offline", {}).get("output_throughput")
        on_goal = level == OFFLINE_GOAL[0] and processor == "vllm"
        target = (">=", OFFLINE_GOAL[1]) if on_goal else None
        lines.append(
            f"| {level} | {_num(offline)} | {_ratio(ours)} | {_ratio(theirs)} | "
            f"{_goal_cell(target, ours)} |"
        )
    generated = [level for level in levels if "generate" in table.get(str(level), {})]
    if generated:
        lines += [
            "",
            "| c | generate() tok/s | ours/generate() | goal |",
            "|---:|---:|---:|---|",
        ]
    for level in generated:
        row = table[str(level)]
        ratio = row.get("ours_over_generate", {}).get("output_throughput")
        target = (">=", GENERATE_GOAL[1]) if level == GENERATE_GOAL[0] else None
        lines.append(
            f"| {level} | {_num(row['generate'].get('output_throughput'))} | {_ratio(ratio)} | "
            f"{_goal_cell(target, ratio)} |"
        )
    return "\n".join(lines)


def _num(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.2f}"


def _ratio(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def _goal_cell(target: tuple[str, float] | None, ratio: float | None) -> str:
    if target is None:
        return ""
    op, bound = target
    if ratio is None:
        return f"{op} {bound:.2f}"
    met = ratio >= bound if op == ">=" else ratio <= bound
    return f"{op} {bound:.2f} {'met' if met else 'NOT met'}"
