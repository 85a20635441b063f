"""How an image is drawn on a page: small images (pixel art such as the 32-64 px shapes model's) are upscaled with
crisp pixels, larger ones (512 px Stable Diffusion) smoothly (issue 12 item 5). The page's CSS keys on the ``px``
class; this module decides it from the PNG's own header, so no image is decoded for it."""

from __future__ import annotations

import struct

PIXELATED_MAX = 64  # natural width and height at most this: drawn with image-rendering: pixelated
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG's IHDR chunk, or None if ``data`` is not a PNG."""
    if len(data) < 24 or not data.startswith(PNG_SIGNATURE) or data[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", data[16:24])
    return int(width), int(height)


def is_pixel_art(data: bytes) -> bool:
    """Whether the image is small enough to be upscaled with crisp pixels (<= PIXELATED_MAX in both sides)."""
    size = png_size(data)
    return size is not None and max(size) <= PIXELATED_MAX


def img_class(data: bytes) -> str:
    """`` class='px'`` for pixel art, else empty: the attribute to put in an ``<img>`` tag."""
    return " class='px'" if is_pixel_art(data) else ""
