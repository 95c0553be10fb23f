"""Images of a mail made fit for an MMS with Pillow: checked, scaled, re-encoded.

Pure (bytes in, bytes out) but CPU-heavy: decoding a 12-megapixel photo
and encoding it again takes tens to hundreds of milliseconds, which is why
:func:`mm7tx.mail.to_mms.mail_to_mms` is synchronous and its caller runs it
off the reactor (:mod:`mm7tx.offload`).

Every image is opened before it is used: one Pillow cannot read is an
:class:`ImageError`, and so is one with more pixels than Pillow's
``Image.MAX_IMAGE_PIXELS`` allows (a decompression bomb: a few kilobytes
that decode to gigabytes), whether Pillow raises its
``DecompressionBombError``, its warning is made an error, or it only warns.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from io import BytesIO

from PIL import Image, ImageOps

# The image types handsets show; others that Pillow reads become JPEG.
HANDSET_TYPES = frozenset(
    {"image/jpeg", "image/gif", "image/png", "image/vnd.wap.wbmp"}
)
_FORMAT_TYPES = {"JPEG": "image/jpeg", "GIF": "image/gif", "PNG": "image/png"}

# A scaled image's longer side: at most MAX_SIDE pixels (more than any
# handset's screen), and never under MIN_SIDE (smaller is refused, as no
# use to anyone).
MAX_SIDE = 1600
MIN_SIDE = 120
# JPEG quality of the first try, and the lowest the tries go down to.
QUALITY = 85
MIN_QUALITY = 60
# Encoding tries before giving up on a size (each resizes and encodes once).
TRIES = 8
# A first guess of a photo's JPEG bytes per pixel at QUALITY, so that the
# first try is near its target.
BYTES_PER_PIXEL = 0.25


class ImageError(Exception):
    """An image that cannot be used; the text says why, for the log or the
    SMTP reply."""


@dataclass(frozen=True, slots=True)
class Picture:
    """An image as it goes into the MMS: its type, bytes and size in pixels."""

    media_type: str
    data: bytes
    width: int
    height: int


def _pixel_limit(max_pixels: int | None) -> int | None:
    limit = Image.MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    return None if limit is None else int(limit)


def _open(data: bytes, max_pixels: int | None) -> Image.Image:
    """The image, its header read (not yet decoded), its size checked."""
    try:
        image = Image.open(BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError("it has too many pixels (a decompression bomb)") from None
    # Pillow raises more than OSError on hostile input (SyntaxError,
    # ValueError, struct.error, IndexError from its plugins): any failure
    # to read the header is an unreadable image.
    except Exception as e:
        raise ImageError(f"it cannot be read as an image ({_short(e)})") from None
    limit = _pixel_limit(max_pixels)
    width, height = image.size
    if width < 1 or height < 1:
        image.close()
        raise ImageError("it has no pixels")
    if limit is not None and width * height > limit:
        image.close()
        raise ImageError(
            f"it has too many pixels ({width}x{height}, a decompression bomb)"
        )
    return image


def _short(error: Exception) -> str:
    return (str(error) or type(error).__name__)[:120]


def inspect(data: bytes, max_pixels: int | None = None) -> Picture:
    """``data`` as it is, with its type and size, if Pillow reads its header
    and it is within the pixel limit; else :class:`ImageError`."""
    with _open(data, max_pixels) as image:
        media_type = _FORMAT_TYPES.get(image.format or "", "")
        return Picture(media_type, data, *image.size)


def _decoded(image: Image.Image, scale: float) -> Image.Image:
    """The image decoded to RGB, upright (its EXIF orientation applied,
    its metadata dropped) and flattened onto white where transparent.
    JPEG decodes straight to the smallest multiple of 1/8 that still
    covers ``scale``, which makes a large photo several times cheaper."""
    width, height = image.size
    image.draft("RGB", (max(1, int(width * scale)), max(1, int(height * scale))))
    image.load()
    upright = ImageOps.exif_transpose(image) or image
    if upright.mode in ("RGBA", "LA", "PA") or (
        upright.mode == "P" and "transparency" in upright.info
    ):
        rgba = upright.convert("RGBA")
        flat = Image.new("RGB", rgba.size, (255, 255, 255))
        flat.paste(rgba, mask=rgba.getchannel("A"))
        return flat
    return upright.convert("RGB")


def _jpeg(image: Image.Image, quality: int) -> bytes:
    out = BytesIO()
    image.save(out, "JPEG", quality=quality, optimize=True)
    return out.getvalue()


def fit(data: bytes, target: int, max_pixels: int | None = None) -> Picture:
    """``data`` re-encoded as a JPEG of at most ``target`` bytes, scaled down
    as far as needed (never below :data:`MIN_SIDE` on its longer side);
    :class:`ImageError` when it is unreadable or cannot get that small.

    Each try resizes from one decoded copy and encodes; the next try's
    scale follows from how far the last one missed (JPEG bytes grow about
    with the pixel count), and the quality steps down to
    :data:`MIN_QUALITY`."""
    with _open(data, max_pixels) as image:
        width, height = image.size
        scale = min(
            1.0,
            MAX_SIDE / max(width, height),
            math.sqrt(max(target, 1) / (width * height * BYTES_PER_PIXEL)),
        )
        try:
            base = _decoded(image, scale)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise ImageError("it has too many pixels (a decompression bomb)") from None
        except Exception as e:  # a decoder failing on hostile data, as in _open
            raise ImageError(f"it cannot be decoded ({_short(e)})") from None
    # The scale again, of the decoded copy (a JPEG decodes smaller).
    longest = max(width, height) * scale
    width, height = base.size
    scale = min(1.0, longest / max(width, height))
    quality = QUALITY
    for _ in range(TRIES):
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        if max(size) < MIN_SIDE:
            break
        resized = base.resize(size, Image.Resampling.LANCZOS) if scale < 1 else base
        encoded = _jpeg(resized, quality)
        if len(encoded) <= target:
            return Picture("image/jpeg", encoded, *size)
        scale = min(scale, 1.0) * math.sqrt(target / len(encoded)) * 0.95
        quality = max(MIN_QUALITY, quality - 5)
    raise ImageError(
        f"it cannot be made as small as {target} bytes "
        f"(not even at {MIN_SIDE} pixels wide)"
    )


def to_jpeg(data: bytes, max_pixels: int | None = None) -> Picture:
    """An image of a type handsets do not show (WebP, TIFF, BMP, …) as a
    JPEG of the same size in pixels; :class:`ImageError` if unreadable."""
    with _open(data, max_pixels) as image:
        try:
            base = _decoded(image, 1.0)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise ImageError("it has too many pixels (a decompression bomb)") from None
        except Exception as e:  # a decoder failing on hostile data, as in _open
            raise ImageError(f"it cannot be decoded ({_short(e)})") from None
    return Picture("image/jpeg", _jpeg(base, QUALITY), *base.size)
