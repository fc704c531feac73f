"""Contact sheets: results drawn as a grid of thumbnails with their rank and score, for people
who would rather look than read."""

from __future__ import annotations

from typing import Optional, Sequence

from PIL import Image, ImageDraw, ImageFont

CELL = 160
LABEL = 30


def contact_sheet(images: Sequence[Image.Image], labels: Sequence[str], path: str, *, title: Optional[str] = None,
                  columns: int = 5, cell: int = CELL) -> str:
    """Write a PNG grid of `images` (each fitted into a cell) with one label line under each."""
    n = len(images)
    columns = max(1, min(columns, n or 1))
    rows = max(1, (n + columns - 1) // columns)
    top = 24 if title else 0
    sheet = Image.new("RGB", (columns * cell, top + rows * (cell + LABEL)), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    if title:
        draw.text((6, 5), title[:120], fill="black", font=font)
    for i, (img, label) in enumerate(zip(images, labels)):
        r, c = divmod(i, columns)
        im = img.convert("RGB").copy()
        if max(im.size) < cell - 8:  # small images (28 px Fashion-MNIST) are enlarged to be seen
            s = (cell - 8) / max(im.size)
            im = im.resize((max(1, round(im.width * s)), max(1, round(im.height * s))), Image.NEAREST)
        im.thumbnail((cell - 8, cell - 8))
        x0, y0 = c * cell, top + r * (cell + LABEL)
        sheet.paste(im, (x0 + (cell - im.width) // 2, y0 + 4 + (cell - 8 - im.height) // 2))
        for j, line in enumerate(str(label).split("\n")[:2]):
            draw.text((x0 + 4, y0 + cell + 1 + 13 * j), line[:26], fill="black", font=font)
    sheet.save(path, "PNG")
    return path
