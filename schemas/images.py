"""Stored bytes -> an upright RGB image, safely: the first half of the image contract (schemas/transform.py
turns the image into the tensor a checkpoint expects). PIL only, so the report and the review app show
images without importing torch.
"""
import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

MAX_PIXELS = 100_000_000  # larger images are refused before their pixels are decoded (bombs)
ORIENTATION_TAG = 0x0112
INTERPOLATIONS = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
                  "bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS}


class ImageTooLarge(ValueError):
    """An image whose header promises more pixels than MAX_PIXELS."""


def open_image(data: bytes) -> Image.Image:
    """Pillow's lazy open (header only), refusing bombs before any pixel is decoded."""
    try:
        with warnings.catch_warnings():  # our own limit below decides, with a clearer message
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise UnidentifiedImageError(f"not an image format Pillow reads (file starts with {data[:12]!r})") from None
    except Image.DecompressionBombError as e:
        raise ImageTooLarge(f"{e.args[0].split(' exceeds')[0]} exceeds the limit of {MAX_PIXELS:,}") from None
    if img.width * img.height > MAX_PIXELS:
        raise ImageTooLarge(f"{img.width}x{img.height} pixels exceeds the limit of {MAX_PIXELS:,}")
    return img


def decode_image(data: bytes, min_side: int | None = None) -> tuple[Image.Image, tuple[int, int]]:
    """Decode any Pillow format to upright RGB; also return the upright size stored in the file.

    JPEG draft mode decodes at a reduced scale whenever both sides stay >= min_side. Raises
    ImageTooLarge for decompression bombs (checked on the header, before decoding), and Pillow's own
    errors (UnidentifiedImageError, OSError) for broken files.
    """
    return decode_opened(open_image(data), min_side)


def decode_opened(img: Image.Image, min_side: int | None) -> tuple[Image.Image, tuple[int, int]]:
    """decode_image's work on an image open_image returned (its header read, no pixel decoded yet)."""
    width, height = img.size
    if img.getexif().get(ORIENTATION_TAG, 1) in (5, 6, 7, 8):  # rotated by 90 degrees
        width, height = height, width
    if min_side and img.format == "JPEG":
        img.draft("RGB", (min_side, min_side))  # DCT scaling keeps both sides >= min_side
    img = ImageOps.exif_transpose(img)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        return _on_white(img.convert("RGBA")), (width, height)
    if img.mode.startswith("I;16") or img.mode == "I":
        img = Image.fromarray((np.asarray(img, dtype=np.uint32) >> 8).astype(np.uint8))
    return img.convert("RGB"), (width, height)


def _on_white(img: Image.Image) -> Image.Image:
    background = Image.new("RGB", img.size, (255, 255, 255))
    background.paste(img, mask=img.getchannel("A"))
    return background


def jpeg_preview(data: bytes, px: int, quality: int) -> bytes:
    """A JPEG of the image at most `px` on its longer side (upright, decoded in draft mode where that pays)."""
    image, _ = decode_image(data, min_side=px // 2)
    image.thumbnail((px, px))
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=quality)
    return buf.getvalue()
