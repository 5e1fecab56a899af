"""The comparison's medians, paired ratios and goal marks (benchmarks/report.py)."""

from __future__ import annotations

from benchmarks.report import markdown_table, medians


def run(server: str, level: int, round_index: int, tok_s: float, ttft: float) -> dict:
    summary = {"output_throughput": tok_s, "median_ttft_ms": ttft, "failed": 0}
    return {"server": server, "level": level, "round": round_index, "summary": summary}


def test_ratios_are_medians_of_per_round_pairs():
    runs = [
        run("ours", 64, 0, 120.0, 10.0),
        run("vllm", 64, 0, 100.0, 10.0),
        run("ours", 64, 1, 60.0, 30.0),  # a slow round for both: the pair still says 1.2
        run("vllm", 64, 1, 50.0, 20.0),
        run("ours", 64, 2, 130.0, 11.0),
        run("vllm", 64, 2, 100.0, 10.0),
        run("offline", 64, 0, 200.0, 0.0),
    ]
    table = medians(runs)["64"]
    assert table["ours"]["output_throughput"] == 120.0
    assert table["vllm"]["output_throughput"] == 100.0
    assert table["ours_over_other"]["output_throughput"] == 1.2
    assert table["ours_over_other"]["median_ttft_ms"] == 1.1
    # offline ran in round 0 only: the served/offline ratio pairs with that round
    assert table["ours_over_offline"]["output_throughput"] == 0.6


def test_table_marks_goals_met_and_missed():
    runs = [run("ours", 64, 0, 110.0, 30.0), run("vllm", 64, 0, 100.0, 20.0)]
    table = markdown_table(medians(runs), [64])
    assert "| 64 | output tok/s | 110 | 100 | 1.10 | >= 1.15 NOT met |" in table
    assert "| 64 | TTFT p50 ms | 30.00 | 20.00 | 1.50 | <= 1.10 NOT met |" in table
    runs = [run("ours", 1, 0, 110.0, 20.0), run("vllm", 1, 0, 100.0, 20.0)]
    table = markdown_table(medians(runs), [1])
    assert "| 1 | output tok/s | 110 | 100 | 1.10 | >= 1.00 met |" in table


def test_a_baseline_checkout_takes_the_place_of_vllm():
    runs = [run("ours", 16, 0, 90.0, 10.0), run("baseline", 16, 0, 100.0, 10.0)]
    table = markdown_table(medians(runs, "baseline"), [16], "baseline (/work/base)")
    assert "| c | metric | ours | baseline (/work/base) | ours/baseline | goal |" in table
    assert "| 16 | output tok/s | 90.00 | 100 | 0.90 |  |" in table  # vLLM's goals: not here


def test_our_engine_has_its_own_goals_and_generate_s_table():
    runs = [
        run("ours", 1, 0, 30.0, 100.0),
        run("vllm", 1, 0, 25.0, 50.0),
        run("generate", 1, 0, 20.0, 60.0),
        run("ours", 64, 0, 150.0, 900.0),
        run("vllm", 64, 0, 180.0, 1000.0),
    ]
    table = markdown_table(medians(runs), [1, 64], processor="transformers")
    assert "| 1 | output tok/s | 30.00 | 25.00 | 1.20 | >= 1.00 met |" in table
    assert "| 1 | TTFT p50 ms | 100 | 50.00 | 2.00 |  |" in table  # a TTFT goal at 64 only
    assert "| 64 | TTFT p50 ms | 900 | 1000 | 0.90 | <= 1.00 met |" in table
    assert "| 1 | 20.00 | 1.50 | >= 2.00 NOT met |" in table  # ours over generate()
