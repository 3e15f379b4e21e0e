"""Classification rows packed end to end, so a mixed batch computes no padding: moved to
`softprompt.inject.packing` (the only code that runs the frozen model); the names stay
importable from here."""

from softprompt.inject.packing import Segment, pack_rows, packed_hidden, worth_packing

__all__ = ["Segment", "pack_rows", "packed_hidden", "worth_packing"]
