"""softprompt: learn tiny prompts for one frozen pretrained transformer."""

__version__ = "0.1.0"
