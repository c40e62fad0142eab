"""Fit images to what Runware keeps before sending them (the ``images`` extra).

Runware stores at most 2048 px on the longer side and throws the rest away,
so a 6000x4000 photo uploaded as it is wastes most of its bytes. With Pillow
installed (``pip install 'assetcache[images]'``) the client does the same
resize first. :meth:`Transform.variant_for` decides from the format and the
size (read by ``_formats.FormatCheck``, no decoding); :meth:`Transform.apply`
does the work, on a worker thread, only when an upload is actually due:

* JPEG, PNG, WEBP no larger than ``max_side``: sent byte for byte (variant ``""``).
* Larger: resized to ``max_side`` on the longer side, aspect kept, with a
  Lanczos filter (a JPEG at least four times too large is first decoded at a
  reduced DCT scale, no less than twice the target, as ``Image.thumbnail``
  does), then
  re-encoded in its own format: JPEG at the lowest quality (84 to 98, 4:4:4
  chroma, progressive) whose pixels stay within 44 dB PSNR of the resized ones,
  so an easy photo costs fewer bytes and a detailed one keeps its detail; PNG
  (always lossless); WEBP lossless when the source was, else quality 95.
  If that is not smaller than the original, the original goes: the server
  keeps the same thing either way (a JPEG that could not get smaller, under
  1 bit per target pixel, is not even decoded).
* BMP and GIF: the ``image`` field names only PNG, JPEG and WEBP, so both are
  converted losslessly to PNG (and resized when larger). An animated GIF sends
  its first frame, with a warning.
* Left as they are: animated PNG and WEBP (a resize would drop frames the
  server may keep), CMYK JPEG and 16-bit colour PNG (Pillow would not
  re-encode them faithfully), and anything Pillow fails to decode (warning).
* EXIF orientation is carried, not applied: the pixels keep their stored
  orientation and the result keeps the source's Orientation tag, so the server
  treats the resized image exactly as it would the original, whatever it does
  with that tag. The ICC profile is kept; other metadata (camera, GPS,
  thumbnails) is dropped, as it changes no pixel the server keeps.

The cache key is ``(namespace, hash of the original bytes, variant)``, where the
variant is ``""`` for an image sent untouched and :attr:`Transform.tag` (which
names the settings and :data:`VERSION`) for one the client transformed: a
change of settings re-uploads what it changes and nothing else.

>>> t = Transform(max_side=2048)
>>> t.variant_for("jpeg", 4000, 3000), t.variant_for("png", 1000, 800)
('fit2048-q95-p44-v2', '')
"""

from __future__ import annotations

import importlib.util
import io
import logging
import math
import os
from dataclasses import dataclass
from typing import Any

from ._errors import ConfigurationError

log = logging.getLogger("assetcache")

#: Bump when the output of :meth:`Transform.apply` changes meaningfully
#: (2: JPEG at a PSNR target, 4:4:4, progressive).
VERSION = 2
MAX_SIDE = 2048
#: WEBP (lossy) quality.
JPEG_QUALITY = 95
#: A resized JPEG is encoded at the lowest quality of :data:`JPEG_LADDER` whose
#: decoded pixels are at least this close (PSNR over all channels) to the
#: resized ones: 44 dB leaves room for a server that resizes the original
#: with another filter (bicubic and Lanczos differ by 43 to 47 dB on photos).
JPEG_PSNR_DB = 44.0
#: The qualities tried (binary search; the highest when none reaches the target).
JPEG_LADDER = (84, 86, 88, 90, 92, 94, 95, 96, 97, 98)
#: Formats always converted to PNG (when transforms are on).
CONVERTED = frozenset({"bmp", "gif"})
#: Formats resized in their own format when larger than ``max_side``.
RESIZED = frozenset({"jpeg", "png", "webp"})
INSTALL_HINT = "pip install 'assetcache[images]'"

_ORIENTATION = 0x0112
#: A photo re-encoded as JPEG at quality 95 takes at least about this many bits
#: per pixel (1.1 to 5.1 on the benchmark's photographs): a source smaller than
#: that at the target size will not get smaller, so it is not even decoded.
_JPEG_MIN_BPP = 1.0


@dataclass(frozen=True, slots=True)
class Transform:
    """The client-side fit to ``max_side`` px (see the module docstring)."""

    max_side: int = MAX_SIDE
    jpeg_quality: int = JPEG_QUALITY
    psnr_db: float = JPEG_PSNR_DB

    @property
    def tag(self) -> str:
        """The variant of transformed images: names the settings and the version."""
        return f"fit{self.max_side}-q{self.jpeg_quality}-p{self.psnr_db:g}-v{VERSION}"

    def variant_for(self, fmt: str | None, width: int | None, height: int | None) -> str | None:
        """``tag`` if this image gets transformed, ``""`` if sent as it is,
        ``None`` if that depends on a size not known yet.

        Mirrored in SQL by ``_store.VARIANT_SQL`` (the warm-hit path): keep both in step.
        """
        if fmt in CONVERTED:
            return self.tag
        if fmt not in RESIZED:
            return ""
        if width is None or height is None:
            return None
        return self.tag if max(width, height) > self.max_side else ""

    def apply(self, data: bytes, fmt: str, label: str) -> tuple[bytes, str] | None:
        """``(bytes, format)`` to send instead of ``data``, or ``None`` to send ``data``.

        Never raises for a bad image: what Pillow cannot handle goes as it is
        (the server decides), with a warning naming ``label``.
        """
        try:
            from PIL import Image
        except ImportError as exc:
            log.warning("%s: Pillow is unavailable (%s); sending the original", label, exc)
            return None
        try:
            return self._apply(Image, data, fmt, label)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, MemoryError) as exc:
            # Pillow reports undecodable or truncated data as OSError/ValueError/SyntaxError.
            log.warning("%s: cannot resize (%s); sending the original", label, exc)
            return None

    def _apply(self, Image: Any, data: bytes, fmt: str, label: str) -> tuple[bytes, str] | None:  # noqa: N803
        im = Image.open(io.BytesIO(data))
        frames = getattr(im, "n_frames", 1)
        if frames > 1:
            if fmt != "gif":
                log.info("%s: animated %s (%d frames): sent as it is", label, fmt.upper(), frames)
                return None
            log.warning(
                "%s: animated GIF (%d frames): sending its first frame only, as PNG", label, frames
            )
        if fmt == "jpeg" and im.mode not in ("RGB", "L"):
            log.info("%s: %s JPEG: sent as it is", label, im.mode)
            return None
        if fmt == "png" and data[24:25] == b"\x10" and data[25:26] in (b"\x02", b"\x06"):
            log.info("%s: 16-bit colour PNG: sent as it is", label)
            return None
        target = fit(im.size, self.max_side)
        if fmt == "jpeg" and len(data) * 8 < _JPEG_MIN_BPP * target[0] * target[1]:
            log.debug("%s: already lean (%d bytes): sending the original", label, len(data))
            return None
        orientation = im.getexif().get(_ORIENTATION)
        icc = im.info.get("icc_profile")
        if fmt == "jpeg" and target != im.size:
            # DCT-domain scaling while decoding, to no less than twice the target
            # (as Image.thumbnail does): the Lanczos pass after it still halves
            # the size at least, which hides the cheap scaling's artefacts.
            im.draft(im.mode, (2 * target[0], 2 * target[1]))
        im.load()
        if target != im.size:
            im = _resize(Image, im, target)
        out_fmt = "png" if fmt in CONVERTED else fmt
        extra: dict[str, Any] = {}
        if icc:
            extra["icc_profile"] = icc
        if orientation and orientation != 1:
            exif = Image.Exif()
            exif[_ORIENTATION] = orientation
            extra["exif"] = exif.tobytes()
        buf = io.BytesIO()
        if out_fmt == "jpeg":
            out = _jpeg_for(Image, im, extra, self.psnr_db)
        elif out_fmt == "png":
            im.save(buf, "PNG", compress_level=6, **extra)
        else:
            if _webp_lossless(data):
                im.save(buf, "WEBP", lossless=True, exact=True, quality=80, method=4, **extra)
            else:
                im.save(buf, "WEBP", quality=self.jpeg_quality, method=4, **extra)
        if out_fmt != "jpeg":
            out = buf.getvalue()
        if fmt not in CONVERTED and len(out) >= len(data):
            log.debug(
                "%s: resized is not smaller (%d >= %d bytes): sending the original",
                label,
                len(out),
                len(data),
            )
            return None
        return out, out_fmt


def _jpeg_for(Image: Any, im: Any, extra: dict[str, Any], target_db: float) -> bytes:  # noqa: N803
    """``im`` as a JPEG (4:4:4, progressive, optimized Huffman tables) at the
    lowest quality of :data:`JPEG_LADDER` within ``target_db`` of its pixels."""
    from PIL import ImageChops, ImageStat

    options = dict(extra)
    if im.mode == "RGB":
        options["subsampling"] = 0

    def encode(quality: int, final: bool) -> bytes:
        buf = io.BytesIO()
        if final:
            im.save(buf, "JPEG", quality=quality, optimize=True, progressive=True, **options)
        else:  # the same pixels (entropy coding aside), at a fraction of the cost
            im.save(buf, "JPEG", quality=quality, subsampling=options.get("subsampling", -1))
        return buf.getvalue()

    def close_enough(quality: int) -> bool:
        with Image.open(io.BytesIO(encode(quality, False))) as got:
            got = got.convert(im.mode)
            sq = ImageStat.Stat(ImageChops.difference(got, im)).sum2
        mse = sum(sq) / (len(sq) * im.size[0] * im.size[1])
        return mse == 0 or 10 * math.log10(255**2 / mse) >= target_db

    lo, hi = 0, len(JPEG_LADDER) - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if close_enough(JPEG_LADDER[mid]):
            hi = mid
        else:
            lo = mid + 1
    return encode(JPEG_LADDER[lo], True)


def fit(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    """``size`` scaled so its longer side is at most ``max_side`` (aspect kept)."""
    w, h = size
    longer = max(w, h)
    if longer <= max_side:
        return w, h
    scale = max_side / longer
    return (max_side, max(1, round(h * scale))) if w >= h else (max(1, round(w * scale)), max_side)


def _resize(Image: Any, im: Any, size: tuple[int, int]) -> Any:  # noqa: N803
    # Lanczos works on L/LA/RGB/RGBA/I/F; widen the other modes losslessly first.
    if im.mode == "P" or im.mode == "PA":
        im = im.convert("RGBA" if im.mode == "PA" or "transparency" in im.info else "RGB")
    elif im.mode == "1":
        im = im.convert("L")
    elif im.mode.startswith("I;16"):
        im = im.convert("I")
    # reducing_gap=3: an integer box reduction first, then Lanczos on the rest;
    # Pillow's docs measure it as indistinguishable from a plain Lanczos pass.
    return im.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)


def _webp_lossless(data: bytes) -> bool:
    """Whether a WEBP's image chunk is VP8L (lossless), walking its RIFF chunks."""
    i = 12
    while i + 8 <= len(data):
        kind = data[i : i + 4]
        if kind == b"VP8L":
            return True
        if kind == b"VP8 ":
            return False
        size = int.from_bytes(data[i + 4 : i + 8], "little")
        i += 8 + size + (size & 1)
    return False


def pillow_installed() -> bool:
    """Whether Pillow can be found, without importing it (start-up stays light)."""
    try:
        return importlib.util.find_spec("PIL") is not None
    except (ImportError, ValueError):
        return False


def resize_available() -> tuple[bool, str]:
    """Whether uploads get resized on this machine, and a sentence saying so (``doctor``).

    >>> resize_available()                 # doctest: +SKIP
    (True, 'Pillow 11.0.0: images larger than 2048 px are resized before upload; ...')
    """
    if not pillow_installed():
        return False, f"Pillow is not installed: images are sent as they are ({INSTALL_HINT})"
    try:
        import PIL
        from PIL import features
    except Exception as exc:  # a broken install must not break doctor
        return False, f"Pillow cannot be imported ({exc}): images are sent as they are"
    missing = [name.upper() for name in ("jpg", "zlib", "webp") if not features.check(name)]
    text = (
        f"Pillow {PIL.__version__}: images larger than {MAX_SIDE} px are resized before "
        "upload; BMP and GIF are sent as PNG"
    )
    if missing:
        text += f" (no {', '.join(missing)} support here: those images go as they are)"
    return True, text


def configure(resize: bool | str | None, max_side: int) -> Transform | None:
    """The transform for ``AssetCache(resize=..., max_side=...)``, or ``None`` for none.

    ``resize``: ``"auto"`` (default; also ``$ASSETCACHE_RESIZE``) resizes when
    Pillow is installed, ``True`` requires Pillow, ``False`` never transforms.
    """
    if resize is None:
        resize = os.environ.get("ASSETCACHE_RESIZE", "auto")
    mode = _parse(resize)
    if isinstance(max_side, bool) or not isinstance(max_side, int) or max_side < 1:
        raise ConfigurationError(f"max_side must be a positive number of pixels, not {max_side!r}")
    if mode is False:
        return None
    if not pillow_installed():
        if mode is True:
            raise ConfigurationError(f"resize=True needs Pillow: {INSTALL_HINT}")
        log.debug("Pillow is not installed: images are sent as they are")
        return None
    return Transform(max_side)


def _parse(value: bool | str) -> bool | str:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text == "auto":
        return "auto"
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ConfigurationError(f"resize must be 'auto', True or False, not {value!r}")
