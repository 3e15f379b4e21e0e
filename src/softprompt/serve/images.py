"""Images sent to /classify: base64 PNG or JPEG in JSON, checked before they join a batch.

The size is checked twice before any pixel is decoded: the encoded bytes (from the
base64 length) and the width x height the header declares, so a small file that
inflates to a huge bitmap (a decompression bomb) is refused without allocating it.
"""

from __future__ import annotations

import base64
import binascii
import io
from typing import Any

from softprompt.serve.engine import BadInput

FORMATS = ("PNG", "JPEG")


class ImageTooLarge(BadInput):
    """An image over the server's byte or pixel limit (HTTP 413)."""


def decode_image(data: Any, *, max_bytes: int, max_pixels: int) -> Any:
    """A base64 string (or a data: URL) -> a loaded RGB PIL image, or BadInput saying why."""
    from PIL import Image, UnidentifiedImageError

    if not isinstance(data, str) or not data:
        raise BadInput("image: send a base64-encoded PNG or JPEG as a JSON string")
    if data.startswith("data:"):
        _, _, data = data.partition(",")  # data:image/png;base64,AAAA...
    if len(data) * 3 // 4 > max_bytes + 2:
        raise ImageTooLarge(
            f"image: about {len(data) * 3 // 4:,} bytes, over the server's {max_bytes:,}-byte "
            "limit (--max-image-mb); send a smaller image"
        )
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise BadInput("image: not valid base64; send the file's bytes base64-encoded") from None
    try:
        image = Image.open(io.BytesIO(raw))
    except Image.DecompressionBombError:
        raise ImageTooLarge("image: its header declares far too many pixels; resize it") from None
    except (UnidentifiedImageError, OSError, ValueError):
        raise BadInput("image: not a PNG or JPEG file (the bytes are no image format)") from None
    if image.format not in FORMATS:
        raise BadInput(f"image: {image.format} is not accepted; send a PNG or JPEG")
    width, height = image.size
    if width * height > max_pixels:
        raise ImageTooLarge(
            f"image: {width}x{height} pixels, over the server's limit of {max_pixels:,} pixels; "
            "resize it first"
        )
    try:
        image.load()
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise BadInput(f"image: the {image.format} data is damaged ({exc})") from None
    return image.convert("RGB")
