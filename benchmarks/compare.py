"""The runtime against vLLM's own OpenAI server and vLLM's offline engine, in one run.

Both servers get the same model and engine settings and the same prompts. They take turns over
several rounds (one server up at a time, the order flipped each round, so drift on a shared
machine hits both alike); each round measures every concurrency level on a fresh server. The
offline engine (`vllm.LLM.generate`) on the same prompts is the ceiling. Printed and written
next to the JSON as markdown: each metric's median over rounds for both servers and the median
of the per-round ratios ours/vLLM, and output tok/s of each server over the offline engine's.

    python -m benchmarks.compare               # the demo model, 3 rounds, c = 1, 16, 64
    python -m benchmarks.compare --model builtin:smollm2   # the real default model
    python -m benchmarks.compare --rounds 1 --servers ours --offline-rounds 0   # a quick look
    python -m benchmarks.compare --model builtin:smollm2 --ours-arg=--processor=transformers \
        --generate-rounds 3 --offline-rounds 0   # our engine, vLLM's server and generate()

`--generate-rounds` adds transformers' `generate()` serving the one-stream prompts one at a time
(benchmarks/generate_baseline.py), the baseline of our own engine (`--processor transformers`),
whose goals the table then shows.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from benchmarks.bench_serving import load_tokenizer, random_prompts, run, summarize
from benchmarks.environment import machine_facts
from benchmarks.report import markdown_table, medians
from benchmarks.servers import EngineSettings, cpu_seconds, running_server

RESULTS = Path(__file__).resolve().parent / "results"
SERVERS = ("ours", "vllm", "baseline")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model folder (default: the demo model, written anew)")
    parser.add_argument("--served-model-name", default="llm-runtime-demo")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument(
        "--prompts-per-level",
        type=int,
        default=4,
        help="prompts per level = this x the concurrency (at least 16)",
    )
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument(
        "--backend", default="completions", choices=["completions", "chat", "chat-structured"]
    )
    parser.add_argument("--max-num-seqs", type=int, default=64)
    parser.add_argument("--max-model-len", type=int, default=1024)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--servers", nargs="+", choices=SERVERS, default=["ours", "vllm"])
    parser.add_argument(
        "--offline-rounds",
        type=int,
        help="run the offline engine in this many rounds (default: every round; 0: never)",
    )
    parser.add_argument(
        "--server-arg",
        action="append",
        default=[],
        help="a flag for both servers, e.g. --server-arg=--stream-interval=2 (repeatable)",
    )
    parser.add_argument(
        "--ours-arg",
        action="append",
        default=[],
        help="a flag for the runtime alone, e.g. --ours-arg=--stream-interval=auto (repeatable)",
    )
    parser.add_argument(
        "--generate-rounds",
        type=int,
        default=0,
        help="run transformers' generate() on the one-stream prompts in this many rounds",
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        help="a checkout of the runtime at an earlier commit (git worktree add DIR COMMIT): "
        "the 'baseline' server runs its code, for a before/after in one run "
        "(--servers ours baseline)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output-dir", type=Path, default=RESULTS)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    started = time.monotonic()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name = f"{stamp}-{socket.gethostname()}"
    work = args.output_dir / "logs" / name
    work.mkdir(parents=True, exist_ok=True)
    model, served_name = args.model, args.served_model_name
    if model is None:
        model = _write_demo_model(work / "demo-model")
    elif model.startswith("builtin:") or model.endswith(".gguf"):
        model, served_name = _prepared_model(model)
    settings = EngineSettings(
        model,
        served_model_name=served_name,
        max_num_seqs=args.max_num_seqs,
        max_model_len=args.max_model_len,
        dtype=args.dtype,
        extra_args=tuple(args.server_arg),
    )
    # The same engine environment for every contender; anything set outside is kept.
    env = {"VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}
    tokenizer = load_tokenizer(model)
    jobs = {
        level: random_prompts(
            tokenizer,
            max(16, args.prompts_per_level * level),
            args.input_len,
            args.output_len,
            args.seed + level,
        )
        for level in args.concurrency
    }
    runs: list[dict[str, Any]] = []
    for round_index in range(args.rounds):
        order = args.servers if round_index % 2 == 0 else args.servers[::-1]
        for kind in order:
            log_path = work / f"{kind}-round{round_index}.log"
            print(f"round {round_index + 1}/{args.rounds}: {kind} starting", flush=True)
            own, own_env, launched = settings, env, kind
            if kind in ("ours", "baseline"):
                own = replace(settings, extra_args=(*settings.extra_args, *args.ours_arg))
            if kind == "baseline":  # the same runtime, its code from the earlier checkout
                if args.baseline is None:
                    parser_error = "--servers baseline needs --baseline DIR"
                    raise SystemExit(parser_error)
                own_env, launched = {**env, "PYTHONPATH": str(args.baseline)}, "ours"
            with running_server(launched, own, log_path, own_env) as (base_url, ready_s, pid):
                for level in args.concurrency:
                    cpu_before = cpu_seconds(pid)
                    records, duration = asyncio.run(
                        run(
                            base_url,
                            args.backend,
                            settings.served_model_name,
                            jobs[level],
                            level,
                            num_warmups=max(2, min(level, 8)),
                        )
                    )
                    summary = summarize(records, duration)
                    # CPU per token moves far less with other load than throughput does.
                    tokens = max(summary["total_output_tokens"], 1)
                    front_end, engine = (
                        (after - before) / tokens * 1e6
                        for after, before in zip(cpu_seconds(pid), cpu_before, strict=True)
                    )
                    summary["front_end_cpu_us_per_token"] = front_end
                    summary["engine_cpu_us_per_token"] = engine
                    print(
                        f"  {kind} c={level}: {summary['output_throughput']:.0f} tok/s, "
                        f"TTFT p50 {summary['median_ttft_ms']:.1f} ms, "
                        f"front end {front_end:.0f} us/token, "
                        f"{summary['failed']} failed",
                        flush=True,
                    )
                    runs.append(
                        {
                            "round": round_index,
                            "server": kind,
                            "level": level,
                            "ready_s": ready_s,
                            "summary": summary,
                        }
                    )
        offline_rounds = args.rounds if args.offline_rounds is None else args.offline_rounds
        if round_index < offline_rounds:
            print(f"round {round_index + 1}/{args.rounds}: offline engine", flush=True)
            offline = _run_offline(settings, jobs, args.output_len, work, round_index, env)
            for level, summary in offline.items():
                print(f"  offline c={level}: {summary['output_throughput']:.0f} tok/s", flush=True)
                entry = {"round": round_index, "server": "offline", "level": int(level)}
                runs.append({**entry, "summary": summary})
        if round_index < args.generate_rounds and 1 in jobs:
            print(f"round {round_index + 1}/{args.rounds}: generate()", flush=True)
            summary = _run_generate(settings, jobs[1], args.output_len, work, round_index)
            print(f"  generate() c=1: {summary['output_throughput']:.1f} tok/s", flush=True)
            runs.append(
                {"round": round_index, "server": "generate", "level": 1, "summary": summary}
            )

    other = "baseline" if "baseline" in args.servers else "vllm"
    table = medians(runs, other)
    label = f"baseline ({args.baseline})" if other == "baseline" else "vLLM server"
    processor = _processor([*args.server_arg, *args.ours_arg])
    markdown = markdown_table(table, args.concurrency, label, processor)
    result = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join([Path(sys.executable).name, "-m", "benchmarks.compare", *sys.argv[1:]]),
        "wall_s": round(time.monotonic() - started, 1),
        "machine": machine_facts(),
        "engine": {
            "model": model,
            "processor": processor,
            "served_model_name": settings.served_model_name,
            "max_num_seqs": settings.max_num_seqs,
            "max_model_len": settings.max_model_len,
            "dtype": settings.dtype,
            "server_args": args.server_arg,
            "ours_args": args.ours_arg,
            "env": env,
            "baseline": str(args.baseline) if args.baseline else None,
        },
        "workload": {
            "backend": args.backend,
            "input_len": args.input_len,
            "output_len": args.output_len,
            "concurrency": args.concurrency,
            "num_prompts": {str(level): len(jobs[level]) for level in args.concurrency},
            "rounds": args.rounds,
            "seed": args.seed,
        },
        "medians": table,
        "runs": runs,
    }
    json_path = args.output_dir / f"{name}.json"
    json_path.write_text(json.dumps(result, indent=1))
    heading = (
        f"{result['date']} on {result['machine']['host']} "
        f"({result['machine']['cpu_model']}, {result['machine']['cpu_cores']} cores, load "
        f"{result['machine']['load_average_1m']} at the end), model {model}, "
        f"ours: the {processor} processor, {args.rounds} rounds, one server at a time, "
        f"{args.backend}, {args.input_len} in / {args.output_len} out, dtype {args.dtype}, "
        f"max-num-seqs {args.max_num_seqs}, max-model-len {args.max_model_len}, "
        + (f"both with {' '.join(args.server_arg)}, " if args.server_arg else "")
        + (f"ours with {' '.join(args.ours_arg)}, " if args.ours_arg else "")
        + f"env {' '.join(f'{k}={v}' for k, v in env.items())}, "
        + f"wall {result['wall_s']:.0f} s"
    )
    (args.output_dir / f"{name}.md").write_text(f"{heading}\n\n{markdown}\n")
    print(f"\n{heading}\n\n{markdown}\nwrote {json_path} and {json_path.with_suffix('.md')}")
    return 0


def _processor(flags: list[str]) -> str:
    """Which processor the runtime serves with, from its flags (vllm unless told otherwise)."""
    for i, flag in enumerate(flags):
        if flag.startswith("--processor="):
            return flag.split("=", 1)[1]
        if flag == "--processor" and i + 1 < len(flags):
            return flags[i + 1]
    return "vllm"


def _run_generate(
    settings: EngineSettings, jobs: list, output_len: int, work: Path, round_index: int
) -> dict[str, Any]:
    prompts_path = work / "generate-prompts.json"
    prompts_path.write_text(json.dumps([job.prompt for job in jobs]))
    output = work / f"generate-round{round_index}.json"
    command = [
        *(sys.executable, "-m", "benchmarks.generate_baseline"),
        *("--prompts", str(prompts_path), "--output", str(output)),
        *("--model", settings.model, "--output-len", str(output_len)),
        *("--dtype", str(settings.dtype)),
    ]
    with (work / f"generate-round{round_index}.log").open("w") as log:
        subprocess.run(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=Path(__file__).resolve().parent.parent,
            check=True,
        )
    return json.loads(output.read_text())


def _prepared_model(named: str) -> tuple[str, str]:
    """The folder a built-in model or a GGUF file is served from (converted once), so that
    vLLM's own server and the offline engine load the very same weights; its served name."""
    from processors.settings import EngineSettings as ModelSettings
    from runtime.model_source import resolve_model

    source = resolve_model(ModelSettings(model_path=named))
    if source.prepare is not None:
        source.prepare()
    return source.settings.model_path, str(source.settings.served_model_name)


def _write_demo_model(directory: Path) -> str:
    script = Path(sys.executable).parent / "llm-runtime"
    runner = [str(script)] if script.exists() else [sys.executable, "-m", "runtime.cli"]
    subprocess.run([*runner, "demo-model", str(directory)], check=True, capture_output=True)
    return str(directory)


def _run_offline(
    settings: EngineSettings,
    jobs: dict[int, list],
    output_len: int,
    work: Path,
    round_index: int,
    env: dict[str, str],
) -> dict[str, dict]:
    prompts_path = work / "offline-prompts.json"
    prompts_path.write_text(json.dumps({str(c): [j.prompt for j in js] for c, js in jobs.items()}))
    output = work / f"offline-round{round_index}.json"
    command = [
        *(sys.executable, "-m", "benchmarks.offline"),
        *("--prompts", str(prompts_path), "--output", str(output)),
        *("--model", settings.model, "--output-len", str(output_len)),
        *("--max-num-seqs", str(settings.max_num_seqs)),
        *("--max-model-len", str(settings.max_model_len)),
        *("--dtype", str(settings.dtype)),
    ]
    with (work / f"offline-round{round_index}.log").open("w") as log:
        subprocess.run(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **env},
            cwd=Path(__file__).resolve().parent.parent,
            check=True,
        )
    return json.loads(output.read_text())


if __name__ == "__main__":
    sys.exit(main())
