"""Finding the folder vLLM serves, and starting and stopping a vLLM server.

vLLM runs in its own virtualenv (`bash scripts/setup-vllm.sh`), as a separate process
in its own process group, so softprompt never imports it; serve/vllm.py talks to it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import httpx

from softprompt.backbones._paths import backbone_cache_root
from softprompt.errors import BackboneError, SoftPromptError

INSTALL = "bash scripts/setup-vllm.sh"
VENV = ".venv-vllm"
MAX_TOKEN_IDS = 128  # vLLM's bound on logprob_token_ids per request


class VllmUnavailable(SoftPromptError):
    """vLLM cannot be reached or failed: the gateway answers 503 and retries nothing."""


# -- finding the folder and starting a server ----------------------------------------------


def model_folder(source: str) -> Path:
    """The HF folder to give vLLM for a backbone: the folder itself, or the cache folder a
    built-in (GGUF) backbone was converted into (loaded once by softprompt before)."""
    path = Path(source).expanduser()
    if path.is_dir() and (path / "config.json").is_file():
        return path.resolve()
    cached = backbone_cache_root() / source
    if (cached / "config.json").is_file():
        return cached.resolve()
    raise BackboneError(
        f"no HF folder for backbone {source!r} to give vLLM: pass a folder with config.json, "
        f"or load the built-in once (e.g. softprompt info --backbone {source}) so it is "
        f"converted into {cached}"
    )


def vllm_python(root: str | Path = ".") -> Path:
    """The interpreter of the separate vLLM virtualenv, or a `VllmUnavailable` naming the
    install command."""
    python = Path(os.environ.get("SOFTPROMPT_VLLM_PYTHON", Path(root) / VENV / "bin" / "python"))
    if not python.is_file():
        raise VllmUnavailable(f"vLLM is not installed ({python} is missing); run: {INSTALL}")
    return python


def server_command(python: Path, folder: Path, port: int, *extra: str) -> list[str]:
    """vLLM's OpenAI server for `folder` as softprompt needs it: float32 (the prompts'
    dtype), prompt embeddings on, the model's generation defaults off, 128 logprobs."""
    return [
        str(python), "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(folder), "--host", "127.0.0.1", "--port", str(port),
        "--enable-prompt-embeds", "--dtype", "float32", "--generation-config", "vllm",
        "--max-logprobs", str(MAX_TOKEN_IDS), *extra,
    ]  # fmt: skip


def start_server(
    folder: Path, port: int, *, python: Path | None = None, log: Path | None = None,
    timeout: float = 600.0, extra: tuple[str, ...] = (), env: dict[str, str] | None = None,
) -> subprocess.Popen:  # fmt: skip
    """Start vLLM on `folder` and wait until /health answers (or the process dies)."""
    python = python or vllm_python()
    out = open(log, "ab") if log is not None else subprocess.DEVNULL  # noqa: SIM115
    process = subprocess.Popen(
        server_command(python, folder, port, *extra),
        stdout=out,
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
        start_new_session=True,  # its own process group: stop_server ends its workers too
    )
    url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise VllmUnavailable(
                f"vLLM exited with {process.returncode} while starting; see {log or 'its output'}"
            )
        try:
            if httpx.get(f"{url}/health", timeout=2.0).status_code == 200:
                return process
        except httpx.TransportError:
            pass
        time.sleep(1.0)
    stop_server(process)
    raise VllmUnavailable(f"vLLM did not answer /health within {timeout:.0f} s; see {log}")


def stop_server(process: subprocess.Popen, *, kill: bool = False, timeout: float = 60.0) -> None:
    """End a server `start_server` started, with the engine and worker processes it spawned
    (its process group): SIGTERM, or SIGKILL when `kill` (or when SIGTERM is not enough)."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGKILL if kill else signal.SIGTERM)
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=timeout)
    except ProcessLookupError:
        pass
