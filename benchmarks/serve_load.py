"""Load test on loopback: concurrent clients, bad requests, prompts hot-swapped mid-run.

Starts `softprompt serve`'s app under uvicorn on 127.0.0.1 (a free port, in a thread of
this process) over 8 tasks (soft prompts and prefix tuning, one generation task), then
runs `--clients` concurrent clients sending `--requests` requests in all, a `--bad`
share of them malformed (broken JSON, unknown task, over-long input, wrong endpoint,
bad token on the admin route), while another client replaces task0's prompt every
`--swap-every` seconds through POST /prompts. Afterwards every good answer is checked
against the same input run alone through `PromptModel.predict` of the version that
answered (the core path, no server, no cache). Prints p50/p99 latency, throughput, the
status counts and the checks: zero 5xx, zero wrong answers, the prompt cache within its
bound, RSS before and after.

    python benchmarks/serve_load.py --requests 120 --clients 12            # SmolLM2
    python benchmarks/serve_load.py --tiny --requests 400 --clients 32     # seconds
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import tempfile
import threading
import time
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import httpx  # noqa: E402
import uvicorn  # noqa: E402

from softprompt.model import PromptModel  # noqa: E402
from softprompt.serve.app import create_app  # noqa: E402
from softprompt.serve.engine import Engine  # noqa: E402
from softprompt.serve.store import PromptStore  # noqa: E402
from softprompt.tasks import TaskConfig  # noqa: E402

TOKEN = "load-test-token"
TEXTS = [
    "a gorgeous , heartfelt film",
    "two hours i will never get back",
    "the acting was good but the plot was boring",
    "i loved it",
    "worst movie ever",
    "really fun and funny",
    "a sad , dull story",
    "great actors , great story",
]


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def make_prompts(backbone, folder: Path, tiny: bool) -> dict[str, Path]:
    """8 tasks: soft prompts and prefixes, one generation task; two files for task0."""
    template = "review : {text} sentiment :" if tiny else "Review: {text}\nSentiment:"
    labels = ["negative", "positive"]
    files = {}
    for i in range(8):
        kind = "generation" if i == 7 else "classification"
        method = "prefix-tuning" if i % 3 == 2 else "soft-prompt"
        options = {"n_tokens": 4 if tiny else 20, "seed": i}
        if method == "prefix-tuning":
            options |= {"n_tokens": 4 if tiny else 10, "hidden": 16 if tiny else 64}
        config = TaskConfig(kind=kind, labels=labels, template=template, max_new_tokens=4)
        model = PromptModel(backbone, config, method=method, method_options=options)
        with torch.no_grad():
            for p in model.method.parameters():
                p.add_(0.3 * torch.randn(p.shape, generator=torch.Generator().manual_seed(i)))
        files[f"task{i}"] = model.save(folder / f"task{i}.safetensors")
    swap = PromptModel(
        backbone,
        TaskConfig(labels=labels, template=template),
        "soft-prompt",
        {"n_tokens": 4 if tiny else 20, "seed": 99},
    )
    files["swap"] = swap.save(folder / "swap.safetensors")
    return files


def bad_request(rng: random.Random, long_text: str):
    """(method, path, kwargs) of a request the server must refuse with a 4xx."""
    choices = [
        (
            "POST",
            "/classify",
            {"content": b"{not json", "headers": {"content-type": "application/json"}},
        ),
        ("POST", "/classify", {"json": {"inputs": [{"task": "nope", "text": "x"}]}}),
        ("POST", "/classify", {"json": {"inputs": [{"task": "task1", "text": long_text}]}}),
        ("POST", "/classify", {"json": {"inputs": [{"task": "task7", "text": "good"}]}}),
        (
            "POST",
            "/generate",
            {"json": {"inputs": [{"task": "task7", "text": "x", "max_tokens": 0}]}},
        ),
        ("POST", "/v1/completions", {"json": {"model": "task1", "prompt": "x", "echo": True}}),
        (
            "POST",
            "/prompts?task=task0",
            {"content": b"junk", "headers": {"authorization": "Bearer no"}},
        ),
    ]
    return rng.choice(choices)


async def client(url, jobs, results, rng, long_text):
    async with httpx.AsyncClient(base_url=url, timeout=300) as http:
        while jobs:
            kind, task, text = jobs.pop()
            if kind == "bad":
                method, path, kwargs = bad_request(rng, long_text)
            elif task == "task7":
                method, path = "POST", "/generate"
                kwargs = {"json": {"inputs": [{"task": task, "text": text, "max_tokens": 4}]}}
            else:
                method, path = "POST", "/classify"
                kwargs = {"json": {"inputs": [{"task": task, "text": text}]}}
            tick = time.perf_counter()
            response = await http.request(method, path, **kwargs)
            seconds = time.perf_counter() - tick
            body = response.json()
            answer = body["results"][0] if response.status_code == 200 else None
            results.append((kind, task, text, response.status_code, seconds, answer))


async def swapper(url, files, stop, every, swaps):
    async with httpx.AsyncClient(base_url=url, timeout=300) as http:
        which = 0
        while not stop.is_set():
            await asyncio.sleep(every)
            path = files["swap"] if which % 2 == 0 else files["task0"]
            response = await http.post(
                "/prompts?task=task0",
                content=Path(path).read_bytes(),
                headers={"authorization": f"Bearer {TOKEN}"},
            )
            swaps.append(response.status_code)
            which += 1


async def drive(url, args, files, long_text):
    rng = random.Random(0)
    jobs = []
    for _ in range(args.requests):
        bad = rng.random() < args.bad
        jobs.append(("bad" if bad else "good", f"task{rng.randrange(8)}", rng.choice(TEXTS)))
    results, swaps, stop = [], [], asyncio.Event()
    swap_task = asyncio.create_task(swapper(url, files, stop, args.swap_every, swaps))
    tick = time.perf_counter()
    await asyncio.gather(*(client(url, jobs, results, rng, long_text) for _ in range(args.clients)))
    wall = time.perf_counter() - tick
    stop.set()
    await swap_task
    return results, swaps, wall


def serve(app) -> tuple[uvicorn.Server, str]:
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return server, f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"


def check(results, store, backbone):
    """Each good answer against the same input run alone through its version's model."""
    references: dict[str, PromptModel] = {}
    alone: dict[tuple[str, str], dict] = {}
    wrong = 0
    for _, task, text, status, _, answer in results:
        if status != 200:
            continue
        ref = f"{answer['task']}@{answer['version']}"
        if ref not in references:
            references[ref] = PromptModel.load(store.path(store.resolve(ref)), backbone)
        if (ref, text) not in alone:  # the same input alone: a batch of one
            alone[(ref, text)] = references[ref].predict([text])[0]
        want = alone[(ref, text)]
        if "label" in want:
            same = want["label"] == answer["label"] and all(
                abs(want["scores"][k] - answer["scores"][k]) < 1e-4 for k in want["scores"]
            )
        else:
            same = want["text"] == answer["text"]
        wrong += not same or answer["task"] != task
    return wrong, len(references)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbone", default="smollm2-135m")
    parser.add_argument("--tiny", action="store_true", help="tiny random Llama (seconds)")
    parser.add_argument("--requests", type=int, default=120)
    parser.add_argument("--clients", type=int, default=12)
    parser.add_argument("--bad", type=float, default=0.2)
    parser.add_argument("--swap-every", type=float, default=2.0)
    parser.add_argument("--cache-mb", type=float, default=8.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.tiny:
        from softprompt.backbones.tiny import tiny_llama

        backbone = tiny_llama()
    else:
        from softprompt.backbones import load_backbone

        backbone = load_backbone(args.backbone)
    folder = Path(tempfile.mkdtemp(prefix="serve-load-"))
    files = make_prompts(backbone, folder, args.tiny)
    store = PromptStore(folder / "store")
    for task in (f"task{i}" for i in range(8)):
        store.add(task, files[task])
    engine = Engine(backbone, store, cache_bytes=int(args.cache_mb * 2**20), max_input_tokens=64)
    engine.load_all()
    app = create_app(engine, admin_token=TOKEN, max_wait_ms=10)
    server, url = serve(app)
    long_text = " ".join(["good"] * 100)
    asyncio.run(drive(url, argparse.Namespace(**{**vars(args), "requests": 8}), files, long_text))
    rss_before = rss_mb()
    results, swaps, wall = asyncio.run(drive(url, args, files, long_text))
    rss_after = rss_mb()
    server.should_exit = True
    statuses: dict[str, int] = {}
    for kind, _, _, status, _, _ in results:
        statuses[f"{kind} {status}"] = statuses.get(f"{kind} {status}", 0) + 1
    good = sorted(s for kind, _, _, status, s, _ in results if kind == "good" and status == 200)
    wrong, versions = check(results, store, backbone)
    result = {
        "backbone": "tiny-llama" if args.tiny else args.backbone,
        "requests": len(results),
        "clients": args.clients,
        "statuses": statuses,
        "5xx": sum(1 for r in results if r[3] >= 500),
        "bad_requests_not_4xx": sum(1 for r in results if r[0] == "bad" and not 400 <= r[3] < 500),
        "good_not_200": sum(1 for r in results if r[0] == "good" and r[3] != 200),
        "wrong_answers": wrong,
        "versions_that_answered": versions,
        "hot_swaps": {"done": len(swaps), "statuses": sorted(set(swaps))},
        "latency_p50_s": statistics.median(good),
        "latency_p99_s": good[min(len(good) - 1, int(0.99 * len(good)))],
        "throughput_rps": len(results) / wall,
        "wall_s": wall,
        "batches": app.state.metrics.histograms["softprompt_batch_rows"].n,
        "cache_bytes": engine.cache.nbytes,
        "cache_limit_bytes": engine.cache.max_bytes,
        "cache_evictions": engine.cache.evictions,
        "rss_mb_before_after": [round(rss_before, 1), round(rss_after, 1)],
        "date": time.strftime("%Y-%m-%d"),
    }
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
