"""Colour emoji as a 3 x size x size image data set, rendered from Noto Color Emoji.

Every single-code-point glyph of the font's cmap (fontTools) is drawn with Pillow at the
font's one bitmap size (109 px) with ``embedded_color=True``, composited over white, cropped
to its square and reduced to ``size`` x ``size`` with a box filter. Glyphs that draw nothing
(controls, spaces, digits without a colour bitmap) and repeated images are dropped. The result is rendered once
and cached as ``emoji-<size>.npz`` (uint8 N x 3 x size x size) in the cache folder.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..files import atomic_write
from .images import uint8_to_unit

EMOJI_FONT = "/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf"
_BITMAP_SIZE = 109  # the only size of the font's CBDT colour bitmaps


def render_emoji(size: int = 32, font_path: str | os.PathLike[str] = EMOJI_FONT) -> np.ndarray:
    """Render the font's colour glyphs: uint8 (N, 3, size, size), over white; identical images are kept
    once (``np.unique``, which also sorts them by pixel values, not by code point)."""
    from PIL import Image, ImageDraw, ImageFont

    if not Path(font_path).is_file():
        raise FileNotFoundError(f"emoji font not found: {font_path} (Debian package fonts-noto-color-emoji)")
    try:
        from fontTools.ttLib import TTFont
    except ModuleNotFoundError:
        raise ModuleNotFoundError("rendering the emoji data set needs fontTools (pip install fonttools)") from None
    codes = [c for c in sorted(TTFont(os.fspath(font_path)).getBestCmap()) if c > 0x20]
    font = ImageFont.truetype(os.fspath(font_path), _BITMAP_SIZE, layout_engine=ImageFont.Layout.BASIC)
    canvas = 136  # the bitmaps are 136 x 128 at size 109
    out = []
    for code in codes:
        glyph = Image.new("RGBA", (canvas, canvas), (255, 255, 255, 0))
        ImageDraw.Draw(glyph).text((0, 0), chr(code), font=font, embedded_color=True)
        box = glyph.getbbox()
        if box is None:
            continue
        white = Image.new("RGBA", glyph.size, (255, 255, 255, 255))
        rgb = Image.alpha_composite(white, glyph).convert("RGB")
        rgb = rgb.crop((0, 0, canvas, canvas)).resize((size, size), Image.Resampling.BOX)
        arr = np.asarray(rgb, dtype=np.uint8)
        if arr.min() == 255:
            continue
        out.append(arr.transpose(2, 0, 1))
    if not out:
        raise ValueError(f"{font_path} gave no colour glyphs")
    return np.unique(np.stack(out), axis=0)


def load_emoji(size: int = 32, cache_dir: str | os.PathLike[str] | None = None) -> tuple[Tensor, None]:
    """Noto colour emoji (N, 3, size, size) float32 in [-1, 1], no labels; rendered on first use and
    cached in ``cache_dir`` (default ``$DIFFUSEKIT_CACHE`` or ``~/.cache/diffusekit``)."""
    from ..metrics.frechet import default_cache_dir

    if not isinstance(size, int) or isinstance(size, bool) or not 8 <= size <= 128:
        raise ValueError(f"emoji size must be an integer from 8 to 128, got {size!r}")
    path = (Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()) / f"emoji-{size}.npz"
    if not path.is_file():
        images = render_emoji(size)

        def write(tmp: str) -> None:
            with open(tmp, "wb") as f:
                np.savez_compressed(f, x=images)

        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, write)
    with np.load(path) as z:
        images = z["x"]
    return uint8_to_unit(torch.from_numpy(images)).contiguous(), None
