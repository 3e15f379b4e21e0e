"""Each task's prompt keys/values in an LRU bounded in bytes: moved to
`softprompt.inject.prompt_cache` (the only code that touches the frozen model); the
names stay importable from here."""

from softprompt.inject.prompt_cache import CachedKV, Key, LayerKV, PromptKVCache, kv_bytes

__all__ = ["CachedKV", "Key", "LayerKV", "PromptKVCache", "kv_bytes"]
