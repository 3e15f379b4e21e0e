"""predict, export and info: the commands that use a trained prompt file; store and
serve hand over to softprompt.serve.commands."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from softprompt.commands.flags import (
    _add_engine_flags,
    _add_precision_flags,
    _backbone_arg,
    _meta,
)


def add_predict_parser(sub: Any) -> None:
    """`softprompt predict`."""
    predict = sub.add_parser("predict", help="label texts (or generate) with a prompt file")
    predict.add_argument("prompt", nargs="?", help="prompt file (not with --task)")
    predict.add_argument(
        "texts",
        nargs="*",
        help="texts or image files, or TASK=TEXT with --task (default: lines on stdin)",
    )
    predict.add_argument("--backbone", default=None)
    _add_precision_flags(predict)
    predict.add_argument(
        "--task",
        action="append",
        metavar="NAME=PROMPT",
        help="serve several tasks at once: a task name and its prompt file (repeatable)",
    )
    _add_engine_flags(predict, "large jobs")
    predict.set_defaults(func=cmd_predict)


def add_export_parser(sub: Any) -> None:
    """`softprompt export`."""
    export = sub.add_parser(
        "export", help="write a prompt without its training-only encoder/MLP (same scores)"
    )
    export.add_argument("prompt")
    export.add_argument("--out", required=True, help="where to write the flat prompt file")
    export.add_argument("--backbone", default=None)
    _add_precision_flags(export)
    export.add_argument("--format", default="softprompt", choices=["softprompt", "peft"],
                        help="peft: a PEFT adapter folder at --out (PeftModel.from_pretrained)")  # fmt: skip
    export.add_argument("--overwrite", action="store_true",
                        help="replace an existing --out file (peft: write into a non-empty folder)")  # fmt: skip
    export.set_defaults(func=cmd_export)


def add_info_parser(sub: Any) -> None:
    """`softprompt info`."""
    info = sub.add_parser("info", help="show what a prompt file holds")
    info.add_argument("prompt")
    info.add_argument("--json", action="store_true")
    info.set_defaults(func=cmd_info)


def cmd_predict(args: argparse.Namespace) -> int:
    if args.task and args.engine == "vllm":
        from softprompt.errors import ConfigError

        raise ConfigError("--engine vllm: predict takes one prompt file, not --task")
    if args.task:
        return _predict_tasks(args)
    from softprompt.errors import ConfigError
    from softprompt.recipes.baselines import load_model

    if args.prompt is None:
        raise ConfigError("predict: give a prompt file (or several with --task NAME=PROMPT)")
    texts = list(args.texts) or [line.rstrip("\n") for line in sys.stdin if line.strip()]
    if not texts:
        raise ConfigError("predict: no texts; give them as arguments or one per line on stdin")
    blank = [i for i, text in enumerate(texts, start=1) if not text.strip()]
    if blank:
        raise ConfigError(f"predict: text {blank[0]} is empty; give some text to label")
    if args.engine == "vllm":
        return _predict_on_vllm(args, texts)
    model = load_model(args.prompt, _backbone_arg(args, args.prompt))
    for text, prediction in zip(texts, model.predict(texts), strict=True):
        key = "image" if model.backbone.spec.kind == "vision" else "text"
        print(json.dumps({key: text, **_answer(prediction)}, ensure_ascii=False))
    return 0


def _predict_on_vllm(args: argparse.Namespace, texts: list[str]) -> int:
    """predict --engine vllm: the same lines, the forward passes done by a vLLM server."""
    from softprompt.errors import ConfigError
    from softprompt.serve.vllm import predict

    if not args.vllm_url:
        raise ConfigError("--engine vllm: give --vllm-url URL (a vLLM on the backbone's folder)")
    answers = predict(args.prompt, texts, args.vllm_url, backbone=args.backbone)
    for text, answer in zip(texts, answers, strict=True):
        print(json.dumps({"text": text, **_answer(answer)}, ensure_ascii=False))
    return 0


def _answer(prediction: dict[str, Any]) -> dict[str, Any]:
    """A prediction as printed beside its input: generated text goes under `output`, so
    the input keeps its `text` key (it was overwritten by the output once)."""
    if "text" in prediction:
        prediction["output"] = prediction.pop("text")
    return _rounded(prediction)


def _rounded(prediction: dict[str, Any]) -> dict[str, Any]:
    if "scores" in prediction:  # four decimals: people read these lines
        prediction["scores"] = {k: round(v, 4) for k, v in prediction["scores"].items()}
    return prediction


def _split_pair(raw: str, what: str) -> tuple[str, str]:
    from softprompt.errors import ConfigError

    name, sep, value = raw.partition("=")
    if not sep or not name:
        raise ConfigError(f"{what}: expected NAME=VALUE, got {raw!r}")
    return name, value


def _predict_tasks(args: argparse.Namespace) -> int:
    """Several prompt files on one backbone; inputs TASK=TEXT answered in mixed batches."""
    from softprompt.api import load_prompts

    paths = dict(_split_pair(raw, "--task") for raw in args.task)
    raw = ([args.prompt] if args.prompt else []) + list(args.texts)
    raw = raw or [line.rstrip("\n") for line in sys.stdin if line.strip()]
    pairs = [_split_pair(item, "input") for item in raw]
    model = load_prompts(paths, _backbone_arg(args, next(iter(paths.values()), None)))
    for (task, text), prediction in zip(pairs, model.predict(pairs), strict=True):
        prediction.pop("task")
        print(json.dumps({"task": task, "text": text, **_answer(prediction)}, ensure_ascii=False))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from softprompt.api import export_prompt
    from softprompt.interop.commands import refuse_existing
    from softprompt.train.run_dir import check_out_file

    if args.format == "peft":
        from softprompt.interop.commands import cmd_export_peft

        if "baseline" in _meta(args.prompt):  # a LoRA baseline: a PEFT LoRA folder
            return _export_lora(args)
        return cmd_export_peft(args)
    check_out_file(args.out, "--out")  # before the backbone loads
    refuse_existing(Path(args.out), "--out", overwrite=args.overwrite)
    out = export_prompt(args.prompt, args.out, _backbone_arg(args, args.prompt))
    before, after = os.path.getsize(args.prompt), os.path.getsize(out)
    print(f"{out}: {after:,} bytes (was {before:,})")
    return 0


def _export_lora(args: argparse.Namespace) -> int:
    """`export LORA_FILE --format peft`: the adapter as a PEFT LoRA folder, for
    PeftModel.from_pretrained or `--backbone-adapter`."""
    from softprompt.interop.commands import check_adapter_out
    from softprompt.recipes.export import export_lora

    out = check_adapter_out(Path(args.out), overwrite=args.overwrite)
    folder = export_lora(args.prompt, out, _backbone_arg(args, args.prompt))
    print(f"{folder}: PEFT LORA adapter; use it with --backbone-adapter {folder}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from softprompt.interop.peft import CONFIG

    if (Path(args.prompt) / CONFIG).is_file():
        return _info_peft(Path(args.prompt), as_json=args.json)
    meta = _meta(args.prompt)
    if args.json:
        print(json.dumps(meta, indent=2))
        return 0
    method, task = meta["method"], meta["task"]
    print(f"file          {args.prompt} ({meta['file_bytes']:,} bytes)")
    print(f"method        {method['name']} {json.dumps(method['options'])}" + _origin(meta))
    print(
        f"backbone      {meta['backbone']['name']} (fingerprint {meta['backbone']['fingerprint']})"
        + _held_as(meta["backbone"])
    )
    print(f"dataset       {meta.get('dataset')}")
    print(f"task          {task['kind']}, head {task['head']}, template {task['template']!r}")
    print(f"labels        {task['labels']}")
    if task.get("verbalizer"):
        print(f"verbalizer    {json.dumps(task['verbalizer'])}")
    print(f"tensors       {meta['tensors']}")
    print(f"trainable     {meta['trainable_parameters']:,} parameters")
    if meta.get("metrics"):
        print(f"metrics       {json.dumps(meta['metrics'])}")
    return 0


def _origin(meta: dict[str, Any]) -> str:
    """ ", exported from p-tuning" for a file `softprompt export` flattened."""
    source = meta.get("flattened_from")
    name = source.get("name") if isinstance(source, dict) else source
    return f", exported from {name}" if name and name != meta["method"]["name"] else ""


def _info_peft(folder: Path, *, as_json: bool) -> int:
    """`info` on a PEFT adapter folder (`export --format peft`, or PEFT's own): what it
    holds, which backbone it was exported from, and how to use it as a prompt here."""
    from softprompt.interop.peft import CONFIG, SIDECAR, WEIGHTS
    from softprompt.promptfile import PromptFileError
    from softprompt.validate import load_json_bounded

    def read(name: str) -> dict[str, Any] | None:
        try:
            value = load_json_bounded((folder / name).read_text(), str(folder / name))
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as e:
            raise PromptFileError(f"{folder / name}: cannot read it ({e})") from None
        if not isinstance(value, dict):
            raise PromptFileError(f"{folder / name}: expected a JSON object")
        return value

    config, sidecar = read(CONFIG) or {}, read(SIDECAR)
    if as_json:
        print(
            json.dumps(
                {"kind": "peft-adapter", "adapter_config": config, "softprompt": sidecar}, indent=2
            )
        )
        return 0
    weights = folder / WEIGHTS
    size = f", {weights.stat().st_size:,} bytes of weights" if weights.is_file() else ", no weights"
    print(f"file          {folder} (a PEFT adapter folder{size})")
    print(f"peft_type     {config.get('peft_type')} ({config.get('task_type')})")
    print(f"base_model    {config.get('base_model_name_or_path')}")
    print(f"virtual_tokens {config.get('num_virtual_tokens')}")
    backbone = (sidecar or {}).get("backbone") or {}
    name = backbone.get("name") or config.get("base_model_name_or_path") or "BASE"
    if sidecar is not None:
        method = sidecar.get("method") or {}
        print(
            f"exported_from {method.get('name')} on {backbone.get('name')} "
            f"(fingerprint {backbone.get('fingerprint')})"
        )
    print(
        f"use here      softprompt import-peft {folder} --backbone {name} --out prompt.safetensors"
    )
    return 0


def _held_as(backbone: dict[str, Any]) -> str:
    """The suffix ", trained in bfloat16, int8": how the frozen weights were held (files before
    issue 19 do not say: float32)."""
    held = [backbone.get("dtype", "float32")]
    if backbone.get("quantize", "none") != "none":
        held.append(backbone["quantize"])
    return f", trained in {', '.join(held)}"


def cmd_store(args: argparse.Namespace) -> int:
    from softprompt.serve.commands import run_store

    return run_store(args)


def cmd_serve(args: argparse.Namespace) -> int:
    from softprompt.serve.commands import run_serve

    return run_serve(args)
