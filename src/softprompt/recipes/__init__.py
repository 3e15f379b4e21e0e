"""Recipes: whole jobs composed from the layers below, at the top of the house.

* `run.run`: train prompts for one task or several, score them beside their baselines
  on each test split, write the report (`softprompt train`).
* `baselines`: what a prompt is compared with: the head-only linear probe, LoRA and
  full fine-tuning, each trained with the run's own steps and data.
* `report.RunReport`: the report's rows, as markdown.
* `export.export_prompt`: a prompt file without its training-only parts.
* `pet.pet`: PET / iPET on K shots: a prompt per pattern, their ensemble's soft labels
  of the unlabelled texts, one prompt distilled on them (`softprompt pet`).
* `meta_init.meta_init`: a soft-prompt init meta-learned over source tasks (Reptile),
  written as a prompt file for `init: file` (`softprompt meta-init`).

Nothing below `recipes` imports it (tests/core/test_architecture.py checks).
"""
