"""The Python API: the few calls a user needs, re-exported from where they live.

from softprompt import api
report = api.run(api.RunConfig())                       # train + report
model = api.load_prompt("runs/movie-sentiment/prompt.safetensors")
model.predict(["A gorgeous, moving film."])

This module only re-exports (it sits above the recipes, see the layer list in
softprompt/__init__.py); the code lives in `model` (building and loading prompts),
`tasks.presets` (framing) and `recipes` (the run, its baselines and report, export).
"""

from __future__ import annotations

from softprompt.config import RunConfig
from softprompt.model import build_model, load_prompt, load_prompts
from softprompt.recipes.export import export_prompt
from softprompt.recipes.loading import load_data
from softprompt.recipes.report import RunReport
from softprompt.recipes.run import build_models, run
from softprompt.tasks.presets import task_config_for

__all__ = [
    "RunConfig",
    "RunReport",
    "build_model",
    "build_models",
    "export_prompt",
    "load_data",
    "load_prompt",
    "load_prompts",
    "run",
    "task_config_for",
]
