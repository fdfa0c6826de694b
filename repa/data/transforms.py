"""Image transforms applied once at preparation time.

``adm_center_crop`` is the centre crop of ADM (Dhariwal & Nichol 2021, guided-diffusion ``center_crop_arr``) that the
REPA reference preprocessing uses: halve with a BOX filter while the short side is at least twice the target, then
one BICUBIC resize so that the short side equals the target, then a centre crop (extra pixel to the right/bottom).
"""
from __future__ import annotations

import numpy as np
from PIL import Image

# Modes converted silently (no information is dropped); any other mode is converted and reported.
_NATIVE_MODES = {3: ("RGB",), 1: ("L",)}


def adm_center_crop(image: Image.Image, size: int) -> np.ndarray:
    """ADM centre crop of a PIL image to ``size`` x ``size``.

    Args:
        image: PIL image in its final mode (RGB or L).
        size: output side length.
    Returns:
        uint8 array (size, size, 3) for RGB or (size, size) for L.
    """
    while min(*image.size) >= 2 * size:
        image = image.resize(tuple(x // 2 for x in image.size), resample=Image.BOX)
    scale = size / min(*image.size)
    image = image.resize(tuple(round(x * scale) for x in image.size), resample=Image.BICUBIC)
    arr = np.asarray(image)
    top = (arr.shape[0] - size) // 2
    left = (arr.shape[1] - size) // 2
    return arr[top:top + size, left:left + size]


_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")


def to_eight_bit(image: Image.Image) -> tuple[Image.Image | None, str | None]:
    """Scale high-bit-depth greyscale (16-bit, 32-bit integer, float) to 8-bit L; other modes pass unchanged.

    PIL's own conversion clips such images (a 16-bit PNG becomes all white, a float TIFF in [0, 1] all black), so
    the values are scaled here: 16-bit by 255/65535; 32-bit integers likewise when they exceed 255; floats from
    [0, 1] (or [0, 255]) to [0, 255]. Returns (image, note) or (None, reason) when the values have no known range.
    """
    mode = image.mode
    if mode not in _SIXTEEN_BIT + ("I", "F"):
        return image, None
    arr = np.asarray(image)
    if mode == "F":
        if not np.isfinite(arr).all():
            return None, "float image with NaN or inf values"
        low, high = float(arr.min()), float(arr.max())
        if low >= 0 and high <= 1:
            scaled, how = arr * 255.0, "scaled from [0, 1]"
        elif low >= 0 and high <= 255:
            scaled, how = arr, "values in [0, 255] kept"
        else:
            return None, f"float image with values {low:g}..{high:g}, outside [0, 1] and [0, 255]"
    else:
        arr = arr.astype(np.int64)
        low, high = int(arr.min()), int(arr.max())
        if low < 0 or high > 65535:
            return None, f"integer image with values {low}..{high}, outside the 16-bit range"
        if mode in _SIXTEEN_BIT or high > 255:
            scaled, how = arr * (255.0 / 65535.0), "scaled from 16 bits"
        else:
            scaled, how = arr, "values in [0, 255] kept"
    out = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    return Image.fromarray(out, mode="L"), f"{mode}->L: {how}"


def convert_mode(image: Image.Image, channels: int) -> tuple[Image.Image, str | None]:
    """Convert a decoded image to RGB (channels=3) or L (channels=1).

    Returns:
        (converted image, note) where note describes a lossy or unusual conversion ("CMYK->RGB", "RGBA->RGB:
        alpha dropped"), or None when the image was already in the target mode.
    """
    target = "RGB" if channels == 3 else "L"
    mode = image.mode
    if mode in _NATIVE_MODES[channels]:
        return image, None
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")  # PIL warns when a palette image with transparency goes straight to RGB
        mode = "P(transparency)"
    note = f"{mode}->{target}"
    if "A" in image.mode or "transparency" in mode:
        note += ": alpha dropped"  # as the ADM / reference code: colour values kept, transparency ignored
    return image.convert(target), note


def to_chw(arr: np.ndarray) -> np.ndarray:
    """(H, W, C) or (H, W) uint8 -> contiguous (C, H, W)."""
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


def transform_image(image: Image.Image, *, resolution: int | None, channels: int, small: str = "upscale"
                    ) -> tuple[np.ndarray | None, list[str]]:
    """Mode conversion then ADM centre crop of one decoded image.

    Args:
        image: decoded PIL image.
        resolution: output side; None keeps the native size (square images only, e.g. Fashion-MNIST).
        channels: 3 (RGB) or 1 (greyscale).
        small: what to do with an image whose short side is below ``resolution``: "upscale" (the ADM crop does a
            bicubic upsample, as in the reference) or "skip".
    Returns:
        (uint8 array (C, H, W) or None when the image must be skipped, notes). A skipped image has one note, the
        reason; a kept one may have notes about conversions.
    """
    notes: list[str] = []
    width, height = image.size
    if resolution is None:
        if width != height:
            return None, [f"not square ({width}x{height}); give a resolution to centre-crop it"]
        resolution_out = None
    else:
        resolution_out = resolution
        if min(width, height) < resolution:
            if small == "skip":
                return None, [f"smaller than the crop ({width}x{height} < {resolution}x{resolution})"]
            notes.append(f"upscaled ({width}x{height} < {resolution}x{resolution})")
    image, note = to_eight_bit(image)
    if image is None:
        return None, [note]
    if note:
        notes.append(note)
    image, note = convert_mode(image, channels)
    if note:
        notes.append(note)
    arr = np.asarray(image) if resolution_out is None else adm_center_crop(image, resolution_out)
    return to_chw(arr), notes
