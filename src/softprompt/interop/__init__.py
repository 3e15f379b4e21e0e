"""Moving prompts between softprompt and other libraries (Hugging Face PEFT)."""

from softprompt.interop.peft import PeftAdapterError, export_peft
from softprompt.interop.peft_import import import_peft

__all__ = ["PeftAdapterError", "export_peft", "import_peft"]
