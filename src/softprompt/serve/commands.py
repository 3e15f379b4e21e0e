"""`softprompt store ...` and `softprompt serve`: argument parsing and printing only."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from softprompt.errors import ConfigError


def default_store() -> str:
    return os.environ.get("SOFTPROMPT_STORE", str(Path("~/.cache/softprompt/store").expanduser()))


def add_store_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    store = sub.add_parser("store", help="manage served prompts: add, list, show, remove, export")
    store.add_argument(
        "--store",
        default=None,
        help="store folder [$SOFTPROMPT_STORE or ~/.cache/softprompt/store]",
    )
    actions = store.add_subparsers(dest="action", required=True)
    add = actions.add_parser("add", help="store a prompt file as TASK's next version")
    add.add_argument("task")
    add.add_argument("prompt", help="prompt file (.safetensors)")
    add.add_argument(
        "--init",
        action="store_true",
        help="make a store in a folder that already holds other files (they are never touched)",
    )
    actions.add_parser("list", help="every stored version")
    show = actions.add_parser("show", help="what one version holds (TASK or TASK@VERSION)")
    show.add_argument("ref")
    remove = actions.add_parser("remove", help="remove TASK@VERSION, or every version of TASK")
    remove.add_argument("ref")
    export = actions.add_parser("export", help="copy TASK[@VERSION] out as a prompt file")
    export.add_argument("ref")
    export.add_argument("--out", required=True)
    export.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    return store


def export_hint(meta: dict[str, Any], prompt: str) -> str | None:
    """A hint, not a refusal, when a stored file still holds training-only parts (P-tuning's
    encoder, prefix-tuning's MLP): it serves the same scores, but `softprompt export`
    writes them as the flat prompt they compute, a fraction of the bytes to store and
    load. Refusing would break scripts that store a run's prompt as it comes."""
    method = meta.get("method") or {}
    options = method.get("options") or {}
    reparameterized = options.get("reparameterize") or options.get("lr_scale", 1.0) != 1.0
    if method.get("name") == "p-tuning":
        part = "its P-tuning encoder"
    elif method.get("name") == "prefix-tuning" and reparameterized:
        part = "its prefix MLP"
    else:
        return None
    return (
        f"hint: the file still holds {part}, needed for training only; "
        f"`softprompt export {prompt} --out flat.safetensors` writes the same prompt flat "
        "(same scores, smaller): store that one instead"
    )


def run_store(args: argparse.Namespace) -> int:
    from softprompt.serve.store import PromptStore

    store = PromptStore(args.store or default_store(), init=getattr(args, "init", False))
    if args.action == "add":
        from softprompt.model import load_prompt_meta

        entry = store.add(args.task, args.prompt)
        print(
            f"{entry.ref}: {entry.method} {entry.kind} prompt for {entry.backbone}, {entry.bytes:,} bytes"
        )
        hint = export_hint(load_prompt_meta(store.path(entry)), args.prompt)
        if hint:
            print(hint, file=sys.stderr)
    elif args.action == "list":
        entries = store.entries()
        latest = {e.ref for e in store.tasks().values()}
        print("| ref | method | kind | backbone | bytes | newest |\n|---|---|---|---|---|---|")
        for e in entries:
            newest = "yes" if e.ref in latest else ""
            print(f"| {e.ref} | {e.method} | {e.kind} | {e.backbone} | {e.bytes:,} | {newest} |")
    elif args.action == "show":
        from softprompt.model import load_prompt_meta

        entry = store.resolve(args.ref)
        meta = load_prompt_meta(store.path(entry))
        print(json.dumps({"entry": entry.to_dict(), "meta": meta}, indent=2))
    elif args.action == "remove":
        for entry in store.remove(args.ref):
            print(f"removed {entry.ref}")
    elif args.action == "export":
        print(store.export(args.ref, args.out, overwrite=args.overwrite))
    return 0


def add_serve_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    serve = sub.add_parser("serve", help="serve every stored task over HTTP (OpenAI-compatible)")
    serve.add_argument(
        "--store",
        default=None,
        help="store folder [$SOFTPROMPT_STORE or ~/.cache/softprompt/store]",
    )
    _add_backbone_options(serve)
    serve.add_argument("--host", default="127.0.0.1", help="bind address (default loopback only)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    _add_batching_options(serve)
    _add_vllm_options(serve)
    serve.add_argument(
        "--max-image-mb", type=float, default=4.0, help="largest encoded image /classify takes"
    )
    serve.add_argument(
        "--max-image-pixels", type=int, default=4096 * 4096, help="largest width x height"
    )
    serve.add_argument(
        "--admin-token",
        default=os.environ.get("SOFTPROMPT_ADMIN_TOKEN"),
        help="enables POST /prompts and DELETE /prompts/TASK with this bearer token [$SOFTPROMPT_ADMIN_TOKEN]",
    )
    return serve


def _add_backbone_options(serve: argparse.ArgumentParser) -> None:
    """Which frozen backbone to load and how: a stored prompt only works on the backbone
    (and adapter) it was trained on, by default the one the stored prompts name."""
    serve.add_argument("--backbone", default=None, help="default: the one the stored prompts name")
    serve.add_argument(
        "--backbone-adapter",
        default=None,
        help="PEFT LoRA folder merged into the backbone (prompts trained on that adapted backbone)",
    )
    serve.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                       help="frozen weights' dtype (auto: float32 on CPU, bf16 on CUDA)")  # fmt: skip
    serve.add_argument("--quantize", default=None, choices=["none", "int8", "nf4"],
                       help="quantize the frozen weights: int8 (torchao) or nf4 (bitsandbytes)")  # fmt: skip
    serve.add_argument("--device-map", default="none", choices=["none", "auto"],
                       help="auto: spread the backbone over GPUs, CPU and disk (Accelerate)")  # fmt: skip


def _add_batching_options(serve: argparse.ArgumentParser) -> None:
    """Bounds on the prompt cache, on batches and on what one request may send: they keep
    one heavy client from stalling or exhausting the server for the others."""
    serve.add_argument("--cache-mb", type=float, default=64.0, help="bound of the prompt K/V cache")
    serve.add_argument("--max-wait-ms", type=float, default=5.0, help="batching window")
    serve.add_argument("--max-batch-tokens", type=int, default=4096)
    serve.add_argument("--max-batch-rows", type=int, default=64)
    serve.add_argument("--max-input-tokens", type=int, default=512)
    serve.add_argument("--max-upload-mb", type=float, default=64.0)
    serve.add_argument(
        "--max-body-mb",
        type=float,
        default=None,
        help="largest JSON request body [the --max-upload-mb value]",
    )
    serve.add_argument(
        "--max-request-tokens",
        type=int,
        default=None,
        help="bound on one request's inputs together, in tokens [--max-batch-tokens]",
    )


def _add_vllm_options(serve: argparse.ArgumentParser) -> None:
    """`--engine vllm`: where vLLM runs (an existing server or one started here) and how
    many requests it is sent at once."""
    serve.add_argument(
        "--engine",
        default="own",
        choices=["own", "vllm"],
        help="vllm: input-level prompts answered by vLLM (--vllm-url or --vllm-start); "
        "K/V prefixes stay on softprompt's own engine",
    )
    serve.add_argument("--vllm-url", default=None, help="a vLLM server on the backbone's folder")
    serve.add_argument(
        "--vllm-start",
        action="store_true",
        help="start vLLM (.venv-vllm) on the backbone's folder, and stop it at shutdown",
    )
    serve.add_argument("--vllm-port", type=int, default=8100, help="port of --vllm-start")
    serve.add_argument(
        "--vllm-concurrency",
        type=int,
        default=256,
        help="requests kept in flight to vLLM at once (vLLM batches them; more wait here); "
        "256 is vLLM's default --max-num-seqs",
    )


def _backbone_name(store, given: str | None) -> str:
    if given:
        return given
    names = sorted({e.backbone for e in store.tasks().values()})
    if len(names) > 1:
        raise ConfigError(f"--backbone: the store holds prompts for {names}; name the one to serve")
    return names[0] if names else "smollm2-135m"


def run_serve(args: argparse.Namespace) -> int:
    from softprompt.device import resolve_device

    device = resolve_device(args.device, "--device")  # before the store and model load
    try:
        import uvicorn

        from softprompt.serve.app import create_app
    except ImportError as exc:
        raise ConfigError(
            f"serve needs FastAPI and uvicorn: pip install 'softprompt[serve]' ({exc})"
        ) from None
    from softprompt.backbones import load_backbone, place
    from softprompt.serve.engine import Engine
    from softprompt.serve.store import PromptStore

    for flag in ("cache_mb", "max_wait_ms", "max_upload_mb", "max_image_mb", "max_image_pixels"):
        if getattr(args, flag) < 0:
            raise ConfigError(f"--{flag.replace('_', '-')}: must be >= 0")
    for flag in ("max_body_mb", "max_request_tokens"):
        if getattr(args, flag) is not None and getattr(args, flag) <= 0:
            raise ConfigError(f"--{flag.replace('_', '-')}: must be > 0")
    _check_engine_flags(args)
    store = PromptStore(args.store or default_store())
    backbone = load_backbone(
        _backbone_name(store, args.backbone),
        dtype=args.dtype,
        quantize=args.quantize,
        device=device,
        adapter=args.backbone_adapter,
        device_map=args.device_map,
    )
    place(backbone.model, device)
    engine = Engine(
        backbone,
        store,
        cache_bytes=int(args.cache_mb * 2**20),
        max_input_tokens=args.max_input_tokens,
    )
    server = None
    try:
        if args.engine == "vllm":
            engine, server = _vllm_router(args, engine)
        engine.load_all()
        _print_tasks(engine)
        app = create_app(
            engine,
            admin_token=args.admin_token,
            max_wait_ms=args.max_wait_ms,
            max_batch_tokens=args.max_batch_tokens,
            max_batch_rows=args.max_batch_rows,
            max_upload_bytes=int(args.max_upload_mb * 2**20),
            max_image_bytes=int(args.max_image_mb * 2**20),
            max_image_pixels=args.max_image_pixels,
            max_body_bytes=None if args.max_body_mb is None else int(args.max_body_mb * 2**20),
            max_request_tokens=args.max_request_tokens,
        )
        host = f"[{args.host}]" if ":" in args.host else args.host  # an IPv6 address
        print(
            f"softprompt serve: listening on http://{host}:{args.port} (OpenAI base URL "
            f"http://{host}:{args.port}/v1, API docs http://{host}:{args.port}/docs)",
            flush=True,
        )
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    finally:
        if server is not None:  # --vllm-start: the server (and its workers) end with ours
            from softprompt.serve.vllm import stop_server

            stop_server(server)
    return 0


def _check_engine_flags(args: argparse.Namespace) -> None:
    """--engine vllm needs exactly one of --vllm-url and --vllm-start; own takes neither."""
    given = [f for f, v in (("--vllm-url", args.vllm_url), ("--vllm-start", args.vllm_start)) if v]
    if args.vllm_concurrency < 1:
        raise ConfigError(f"--vllm-concurrency {args.vllm_concurrency}: give 1 or more")
    if args.engine == "own" and given:
        raise ConfigError(f"{given[0]}: only with --engine vllm")
    if args.engine == "vllm" and args.backbone_adapter:
        raise ConfigError(
            "--backbone-adapter: vLLM serves the plain backbone folder; merge the adapter into "
            "a folder and pass it as --backbone, or serve with --engine own"
        )
    if args.engine == "vllm" and len(given) != 1:
        raise ConfigError(
            "--engine vllm: give --vllm-url URL (a running vLLM on the backbone's folder, "
            "started with --enable-prompt-embeds) or --vllm-start (start one from .venv-vllm)"
        )


def _vllm_router(args: argparse.Namespace, engine):
    """(Router over `engine` and vLLM, the process --vllm-start started or None)."""
    from softprompt.serve.router import Router
    from softprompt.serve.vllm import VllmEngine, model_folder, start_server, stop_server

    folder = model_folder(engine.backbone.name)
    server, url = None, args.vllm_url
    if args.vllm_start:
        print(f"softprompt serve: starting vLLM on {folder} (port {args.vllm_port})", flush=True)
        server = start_server(folder, args.vllm_port)
        url = f"http://127.0.0.1:{args.vllm_port}"
    try:
        width = args.vllm_concurrency  # requests and connections to vLLM at once
        vllm = VllmEngine(folder, url, backbone=engine.backbone, workers=width)
        return Router(engine, vllm, workers=width), server
    except BaseException:
        if server is not None:
            stop_server(server)
        raise


def _print_tasks(engine) -> None:
    for task, why in engine.refused.items():
        print(f"softprompt serve: not serving {task!r}: {why}", flush=True)
    where = {t: getattr(s, "engine", "own") for t, s in sorted(engine.tasks.items())}
    print(
        f"softprompt serve: {len(where)} tasks on {engine.backbone.name}: {where}",
        flush=True,
    )
