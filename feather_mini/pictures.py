"""The demo's pictures, drawn with Pillow alone (no plotting library).

- demo_figure: the image once per method, side by side: the visual tokens kept to the end
  at full brightness, those dropped at a later stage half dimmed, those dropped at the
  first stage dark; the target box (white) and the predicted box (orange) on top.
- heatmap_figure: for each method, how often each grid position was kept over many
  images (the paper's Figure 3b), on one colour scale with its legend.
"""
from __future__ import annotations

from PIL import Image, ImageDraw, ImageFont

PANEL = 240  # px: one image or heatmap panel; 5 panels side by side fit a README page
MARGIN = 12
BACKGROUND = (255, 255, 255)
INK = (20, 20, 20)
GREY = (110, 110, 110)
TARGET = (255, 255, 255)
PREDICTED = (255, 140, 0)
KEPT_OUTLINE = (0, 200, 255)
DIM_LATER, DIM_FIRST = 0.45, 0.82  # how much of a dropped cell is blended to black


def font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)  # Pillow's bundled font: the same on every machine


def text_width(draw: ImageDraw.ImageDraw, text: str, size: int) -> int:
    return round(draw.textlength(text, font=font(size)))


def fit(draw: ImageDraw.ImageDraw, text: str, size: int, width: int) -> str:
    """The text cut with '...' to fit `width` pixels (answers can be long)."""
    if text_width(draw, text, size) <= width:
        return text
    while text and text_width(draw, text + "...", size) > width:
        text = text[:-1]
    return text + "..."


def stages_survived(kept: dict, grid_shape: tuple[int, int], first_patch: int) -> list[list[int]]:
    """rows x cols: how many of the schedule's stages each grid position survived.

    kept: {layer: original visual-token indices kept at that stage} (a run's `kept`, tensors or lists);
    first_patch: the index of the grid's first token (1 when a CLS token comes first).
    With no stages every position counts as kept (0 stages, all survived)."""
    rows, cols = grid_shape
    survived = [[0] * cols for _ in range(rows)]
    for layer in sorted(kept):
        for index in map(int, kept[layer]):
            if index >= first_patch:
                r, c = divmod(index - first_patch, cols)
                survived[r][c] += 1
    return survived


def dim(image: Image.Image, box: tuple[int, int, int, int], amount: float) -> None:
    """Blend one rectangle of `image` towards black, in place."""
    region = image.crop(box)
    image.paste(Image.blend(region, Image.new("RGB", region.size), amount), box)


def token_panel(square: Image.Image, grid_shape: tuple[int, int], survived: list[list[int]] | None, num_stages: int,
                target_box=None, predicted_box=None) -> Image.Image:
    """One method's panel: the (square) image the model saw with its visual tokens shaded by
    how long they survived, and boxes given normalized to that square."""
    rows, cols = grid_shape
    panel = square.convert("RGB").resize((PANEL, PANEL), Image.Resampling.NEAREST)
    draw = ImageDraw.Draw(panel)
    cell = lambda r, c: (round(c * PANEL / cols), round(r * PANEL / rows),  # noqa: E731
                         round((c + 1) * PANEL / cols), round((r + 1) * PANEL / rows))
    if survived is not None and num_stages:
        for r in range(rows):
            for c in range(cols):
                if survived[r][c] == 0:
                    dim(panel, cell(r, c), DIM_FIRST)
                elif survived[r][c] < num_stages:
                    dim(panel, cell(r, c), DIM_LATER)
        for r in range(rows):
            for c in range(cols):
                if survived[r][c] == num_stages:
                    x1, y1, x2, y2 = cell(r, c)
                    draw.rectangle((x1, y1, x2 - 1, y2 - 1), outline=KEPT_OUTLINE, width=1)
    for box, colour, width in ((target_box, TARGET, 2), (predicted_box, PREDICTED, 3)):
        if box is not None:
            x1, y1, x2, y2 = (min(max(v, 0.0), 1.0) * PANEL for v in box)
            if x2 > x1 and y2 > y1:
                draw.rectangle((x1, y1, x2 - 1, y2 - 1), outline=colour, width=width)
    return panel


def legend(draw: ImageDraw.ImageDraw, x: int, y: int, entries: list[tuple[str, dict]], size: int = 13) -> None:
    """A row of (label, swatch) pairs; a swatch has a "fill", an "outline" (and its "width"), or
    an "inner" frame drawn inside the fill."""
    for label, swatch in entries:
        draw.rectangle((x, y, x + 18, y + 14), fill=swatch.get("fill"), outline=swatch.get("outline", GREY),
                       width=swatch.get("width", 1))
        if "inner" in swatch:
            draw.rectangle((x + 3, y + 3, x + 15, y + 11), outline=swatch["inner"], width=2)
        draw.text((x + 24, y), label, fill=INK, font=font(size))
        x += 24 + text_width(draw, label, size) + 22


def demo_figure(square: Image.Image, grid_shape: tuple[int, int], rows: list[dict], title: str,
                target_box=None) -> Image.Image:
    """The demo's picture. rows: one dict per method with 'method', 'caption' (lines of text),
    'survived' (stages_survived or None), 'num_stages' and 'predicted_box' (normalized or None)."""
    header, line = 30, 17
    caption_lines = max(len(r["caption"]) for r in rows)
    width = MARGIN + len(rows) * (PANEL + MARGIN)
    height = header + PANEL + 8 + caption_lines * line + 44
    figure = Image.new("RGB", (max(width, 760), height), BACKGROUND)
    draw = ImageDraw.Draw(figure)
    draw.text((MARGIN, 8), fit(draw, title, 15, figure.width - 2 * MARGIN), fill=INK, font=font(15))
    for i, row in enumerate(rows):
        x = MARGIN + i * (PANEL + MARGIN)
        figure.paste(token_panel(square, grid_shape, row["survived"], row["num_stages"], target_box,
                                 row["predicted_box"]), (x, header))
        for j, text in enumerate(row["caption"]):
            draw.text((x, header + PANEL + 6 + j * line), fit(draw, text, 13, PANEL), fill=INK if j == 0 else GREY,
                      font=font(14 if j == 0 else 13))
    dark = tuple(round(v * (1 - DIM_FIRST)) for v in (200, 200, 200))
    half = tuple(round(v * (1 - DIM_LATER)) for v in (200, 200, 200))
    entries = [("kept to the end", {"fill": (200, 200, 200), "outline": KEPT_OUTLINE}),
               ("dropped at a later stage", {"fill": half}),
               ("dropped at the first stage", {"fill": dark})]
    if target_box is not None:  # white on the figure's white would vanish: a white frame inside a dark swatch
        entries.append(("target box", {"fill": (60, 60, 60), "inner": TARGET}))
    legend(draw, MARGIN, height - 26, entries + [("predicted box", {"outline": PREDICTED, "width": 3})])
    return figure


def ramp(value: float) -> tuple[int, int, int]:
    """0 -> white, 1 -> dark blue: one sequential colour scale for every heatmap panel."""
    low, high = (255, 255, 255), (8, 48, 107)
    return tuple(round(a + (b - a) * value) for a, b in zip(low, high))


def heatmap_figure(panels: list[dict], title: str) -> Image.Image:
    """panels: one dict per method with 'caption' (text lines) and 'frequency' (rows x cols of
    values in [0, 1]). Grid rows are labelled, row 0 at the top."""
    header, line, axis = 46, 17, 26
    caption_lines = max(len(p["caption"]) for p in panels)
    width = axis + MARGIN + len(panels) * (PANEL + MARGIN)
    height = header + PANEL + 8 + caption_lines * line + 48
    figure = Image.new("RGB", (max(width, 560), height), BACKGROUND)
    draw = ImageDraw.Draw(figure)
    draw.text((MARGIN, 8), fit(draw, title, 15, figure.width - 2 * MARGIN), fill=INK, font=font(15))
    for i, p in enumerate(panels):
        x0 = axis + MARGIN + i * (PANEL + MARGIN)
        frequency = p["frequency"]
        rows, cols = len(frequency), len(frequency[0])
        for r in range(rows):
            for c in range(cols):
                box = (x0 + round(c * PANEL / cols), header + round(r * PANEL / rows),
                       x0 + round((c + 1) * PANEL / cols) - 1, header + round((r + 1) * PANEL / rows) - 1)
                draw.rectangle(box, fill=ramp(frequency[r][c]))
        draw.rectangle((x0 - 1, header - 1, x0 + PANEL, header + PANEL), outline=GREY)
        for j, text in enumerate(p["caption"]):
            draw.text((x0, header + PANEL + 6 + j * line), fit(draw, text, 13, PANEL), fill=INK if j == 0 else GREY,
                      font=font(14 if j == 0 else 13))
    rows = len(panels[0]["frequency"])
    for r in range(0, rows, max(1, rows // 6)):  # row labels on the left, every few rows
        draw.text((MARGIN, header + round((r + 0.5) * PANEL / rows) - 6), str(r), fill=GREY, font=font(11))
    draw.text((MARGIN - 4, header - 16), "row", fill=GREY, font=font(11))
    y = height - 28  # the colour scale
    draw.text((MARGIN, y), "kept in 0%", fill=INK, font=font(13))
    x = MARGIN + text_width(draw, "kept in 0%", 13) + 8
    for k in range(200):
        draw.line((x + k, y, x + k, y + 14), fill=ramp(k / 199))
    draw.rectangle((x - 1, y - 1, x + 200, y + 15), outline=GREY)
    draw.text((x + 208, y), "100% of the images", fill=INK, font=font(13))
    return figure
