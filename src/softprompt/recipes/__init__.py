"""Recipes: whole jobs composed from the layers below, at the top of the house.

* `run.run`: train prompts for one task or several, score them beside their baselines
  on each test split, write the report (`softprompt train`).
* `baselines`: what a prompt is compared with: the head-only linear probe, LoRA and
  full fine-tuning, each trained with the run's own steps and data.
* `report.RunReport`: the report's rows, as markdown.
* `export.export_prompt`: a prompt file without its training-only parts.

Nothing below `recipes` imports it (tests/core/test_architecture.py checks).
"""
