"""The causal injector whose prompt prefixes come from a per-task K/V cache: moved to
`softprompt.inject.cached`; the names stay importable from here."""

from softprompt.inject.cached import CachedInjector, CachedPrompt

__all__ = ["CachedInjector", "CachedPrompt"]
