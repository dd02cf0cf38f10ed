"""The pictures of the demo, the heatmap and the tutorial, drawn with Pillow alone (no plotting library).

- patch_cells, patch_map: the grid of visual tokens as text, one character per patch: on the
  target, on another object, or background.
- demo_figure: the image once per method, side by side: the visual tokens kept to the end
  at full brightness, those dropped at a later stage tinted purple, those dropped at the
  first stage dark; the target box (white) and the predicted box (orange) on top.
- heatmap_figure: for each method, how often each grid position was kept over many
  images (the paper's Figure 3b), each panel on its own colour scale (white: 0, dark blue:
  that panel's maximum) with its bar underneath.
- distance_figure: how often each visual token is kept against its distance to the last
  prompt token, one panel per method, the grid rows marked.
- layers_figure: the visual tokens each method holds at every decoder layer.
- curves_figure: accuracy against FLOPs reduction, one line per series, each point with its
  standard error as a bar; panels side by side (boxes, the other questions).
"""
from __future__ import annotations

import math

import torch
from PIL import Image, ImageDraw, ImageFont

from .processing import grid_cells

PANEL = 240  # px: one image or heatmap panel; 5 panels side by side fit a README page
MARGIN = 12
GUTTER = MARGIN + 18 + 34  # px left of a chart's plot: its turned axis title, then tick labels up to "100%"
BACKGROUND = (255, 255, 255)
INK = (20, 20, 20)
GREY = (110, 110, 110)
FAINT = (225, 225, 225)
TARGET = (255, 255, 255)
PREDICTED = (255, 140, 0)
KEPT_OUTLINE = (0, 200, 255)
# (colour, share of it blended in) for a dropped visual token: a hue for the later stages, not only a darker
# shade, so that FEATHER's two kinds of dropped token stay apart on the scenes' dark background
DROPPED_LATER = ((180, 20, 210), 0.5)
DROPPED_FIRST = ((0, 0, 0), 0.82)
BAR = (8, 48, 107)  # the darkest colour of the heatmap's scale, and the distance figure's bars
# Okabe and Ito's colours, which stay apart for colour-blind readers (grey first: the baseline)
SERIES = [(120, 120, 120), (0, 114, 178), (213, 94, 0), (0, 158, 115), (204, 121, 167), (230, 159, 0),
          (86, 180, 233)]


def font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)  # Pillow's bundled font: the same on every machine


def text_width(draw: ImageDraw.ImageDraw, text: str, size: int) -> int:
    return round(draw.textlength(text, font=font(size)))


def fit(draw: ImageDraw.ImageDraw, text: str, size: int, width: int) -> str:
    """The text on one line (a prompt or an answer may hold line breaks, which Pillow cannot measure),
    cut with '...' to fit `width` pixels (answers can be long)."""
    text = " ".join(text.splitlines())
    if text_width(draw, text, size) <= width:
        return text
    while text and text_width(draw, text + "...", size) > width:
        text = text[:-1]
    return text + "..."


def patch_cells(image: Image.Image, grid_shape: tuple[int, int], target_box, background) -> list[str]:
    """The grid as text, one string per grid row, one character per cell: 'o' for a cell that
    overlaps target_box (x1, y1, x2, y2 in the image's pixels, x2/y2 exclusive) and holds a pixel
    of another colour than `background` (RGB), '+' for any other cell holding one, '.' otherwise.
    Cells are image.width // cols by image.height // rows pixels."""
    rows, cols = grid_shape
    w, h = image.width // cols, image.height // rows
    image, background = image.convert("RGB"), tuple(background)
    x1, y1, x2, y2 = target_box
    lines = []
    for r in range(rows):
        line = ""
        for c in range(cols):
            colours = image.crop((c * w, r * h, (c + 1) * w, (r + 1) * h)).getcolors(w * h)
            if all(colour == background for _, colour in colours):
                line += "."
            else:
                on_target = c * w < x2 and (c + 1) * w > x1 and r * h < y2 and (r + 1) * h > y1
                line += "o" if on_target else "+"
        lines.append(line)
    return lines


def patch_map(image: Image.Image, grid_shape: tuple[int, int], target_box, background) -> str:
    """patch_cells as one printable block, each row labelled ("row  0  ..o+")."""
    return "\n".join(f"row {r:2d}  {line}" for r, line in enumerate(patch_cells(image, grid_shape, target_box,
                                                                                 background)))


def stages_survived(kept: dict, grid_shape: tuple[int, int], first_patch: int) -> list[list[int]]:
    """rows x cols: how many of the schedule's stages each grid position survived.

    kept: {layer: original visual-token indices kept at that stage} (a run's `kept`, tensors or lists);
    first_patch: the index of the grid's first token (1 when a CLS token comes first).
    With no stages every position counts as kept (0 stages, all survived)."""
    rows, cols = grid_shape
    survived = [[0] * cols for _ in range(rows)]
    for layer in sorted(kept):
        for cell in grid_cells(torch.as_tensor(kept[layer], dtype=torch.long), first_patch).tolist():
            r, c = divmod(cell, cols)
            survived[r][c] += 1
    return survived


def tint(image: Image.Image, box: tuple[int, int, int, int], blend: tuple[tuple, float]) -> None:
    """Blend one rectangle of `image` towards blend = (colour, amount), in place."""
    colour, amount = blend
    region = image.crop(box)
    image.paste(Image.blend(region, Image.new("RGB", region.size, colour), amount), box)


def tinted(colour: tuple[int, int, int], blend: tuple[tuple, float]) -> tuple[int, int, int]:
    """What tint() makes of one pixel of `colour` (for the legend's swatches)."""
    swatch = Image.new("RGB", (1, 1), colour)
    tint(swatch, (0, 0, 1, 1), blend)
    return swatch.getpixel((0, 0))


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
                    tint(panel, cell(r, c), DROPPED_FIRST)
                elif survived[r][c] < num_stages:
                    tint(panel, cell(r, c), DROPPED_LATER)
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


def legend_width(draw: ImageDraw.ImageDraw, entries: list[tuple[str, dict]], size: int = 13) -> int:
    return sum(24 + text_width(draw, label, size) + 22 for label, _ in entries) - 22


def legend(draw: ImageDraw.ImageDraw, x: int, y: int, entries: list[tuple[str, dict]], size: int = 13) -> None:
    """A row of (label, swatch) pairs, legend_width wide; a swatch has a "fill", an "outline" (and its
    "width"), or an "inner" frame drawn inside the fill."""
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
    # The swatches show what becomes of the image's commonest colour (the scenes' background)
    small = square.convert("RGB").resize((PANEL, PANEL), Image.Resampling.NEAREST)
    base = max(small.getcolors(PANEL * PANEL))[1]
    entries = [("kept to the end", {"fill": base, "outline": KEPT_OUTLINE}),
               ("dropped at a later stage", {"fill": tinted(base, DROPPED_LATER)}),
               ("dropped at the first stage", {"fill": tinted(base, DROPPED_FIRST)})]
    if target_box is not None:  # white on the figure's white would vanish: a white frame inside a dark swatch
        entries.append(("target box", {"fill": (60, 60, 60), "inner": TARGET}))
    legend(draw, MARGIN, height - 26, entries + [("predicted box", {"outline": PREDICTED, "width": 3})])
    return figure


def ramp(value: float) -> tuple[int, int, int]:
    """0 -> white, 1 -> dark blue: the heatmap's sequential colour scale."""
    low = (255, 255, 255)
    return tuple(round(a + (b - a) * value) for a, b in zip(low, BAR))


def colour_bar(draw: ImageDraw.ImageDraw, x: int, y: int, width: int, peak: float) -> None:
    """A heatmap panel's scale, `width` px wide: "0%", the ramp, "max <peak>%" (all white when peak is 0)."""
    high = f"max {100 * peak:.3g}%"
    x1, x2 = x + text_width(draw, "0%", 11) + 6, x + width - text_width(draw, high, 11) - 6
    draw.text((x, y), "0%", fill=GREY, font=font(11))
    for k in range(x1, x2):
        draw.line((k, y + 1, k, y + 10), fill=ramp((k - x1) / max(1, x2 - x1 - 1) if peak > 0 else 0.0))
    draw.rectangle((x1 - 1, y, x2, y + 11), outline=GREY)
    draw.text((x2 + 6, y), high, fill=GREY, font=font(11))


def heatmap_figure(panels: list[dict], title: str) -> Image.Image:
    """panels: one dict per method with 'caption' (text lines) and 'frequency' (rows x cols of
    values in [0, 1]). Each panel's dark blue is its own maximum, so a stage that keeps only a
    few tokens still shows where. Grid rows are labelled, row 0 at the top."""
    header, line, axis, scale = 46, 17, 26, 20
    caption_lines = max(len(p["caption"]) for p in panels)
    width = axis + MARGIN + len(panels) * (PANEL + MARGIN)
    height = header + PANEL + scale + 6 + caption_lines * line + MARGIN
    figure = Image.new("RGB", (max(width, 560), height), BACKGROUND)
    draw = ImageDraw.Draw(figure)
    draw.text((MARGIN, 8), fit(draw, title, 15, figure.width - 2 * MARGIN), fill=INK, font=font(15))
    for i, p in enumerate(panels):
        x0 = axis + MARGIN + i * (PANEL + MARGIN)
        frequency = p["frequency"]
        rows, cols = len(frequency), len(frequency[0])
        peak = max(max(r) for r in frequency)
        for r in range(rows):
            for c in range(cols):
                box = (x0 + round(c * PANEL / cols), header + round(r * PANEL / rows),
                       x0 + round((c + 1) * PANEL / cols) - 1, header + round((r + 1) * PANEL / rows) - 1)
                draw.rectangle(box, fill=ramp(frequency[r][c] / peak if peak > 0 else 0.0))
        draw.rectangle((x0 - 1, header - 1, x0 + PANEL, header + PANEL), outline=GREY)
        colour_bar(draw, x0, header + PANEL + 6, PANEL, peak)
        for j, text in enumerate(p["caption"]):
            draw.text((x0, header + PANEL + scale + 6 + j * line), fit(draw, text, 13, PANEL),
                      fill=INK if j == 0 else GREY, font=font(14 if j == 0 else 13))
    rows = len(panels[0]["frequency"])
    for r in range(0, rows, max(1, rows // 6)):  # row labels on the left, every few rows
        draw.text((MARGIN, header + round((r + 0.5) * PANEL / rows) - 6), str(r), fill=GREY, font=font(11))
    draw.text((MARGIN - 4, header - 16), "row", fill=GREY, font=font(11))
    return figure


# -----------------------------------------------------------------------------
# Charts: axes drawn by hand


def tick_step(largest: float, pixels: int, gap: int) -> int:
    """The smallest of 1, 2, 5, 10, 20, 50, ... whose ticks lie at least `gap` px apart when
    `largest` spans `pixels`."""
    for power in range(12):
        for step in (1, 2, 5):
            if step * 10 ** power * pixels >= gap * max(largest, 1):
                return step * 10 ** power
    raise ValueError(f"no tick step for {largest}")


def vertical_text(figure: Image.Image, text: str, x: int, y_middle: int, size: int = 13) -> None:
    """`text` turned a quarter left (reading upwards), its left edge at x, centred on y_middle."""
    draw = ImageDraw.Draw(figure)
    strip = Image.new("RGB", (text_width(draw, text, size) + 2, size + 4), BACKGROUND)
    ImageDraw.Draw(strip).text((1, 0), text, fill=INK, font=font(size))
    strip = strip.rotate(90, expand=True)
    figure.paste(strip, (x, y_middle - strip.height // 2))


def distance_panel(draw: ImageDraw.ImageDraw, panel: dict, y0: int, spans: list[tuple[int, int]], left: int,
                   unit: int, right: int) -> None:
    """One panel of distance_figure, its plot's top row of pixels at y0 (110 px tall): the caption
    above, the frame, the row boundaries, the 0-50-100% ticks and one bar per token."""
    plot = 110
    draw.text((left, y0 - 18), fit(draw, panel["caption"], 13, right - left), fill=INK, font=font(13))
    draw.rectangle((left - 1, y0 - 1, right, y0 + plot), outline=GREY)
    for _, far in spans[1:]:  # behind the bars: a row of always-kept tokens hides its own boundary
        draw.line((far, y0, far, y0 + plot - 1), fill=FAINT)
    for share in (0, 0.5, 1):
        label = f"{100 * share:.0f}%"
        draw.text((left - 4 - text_width(draw, label, 11), y0 + plot - round(share * plot) - 6), label,
                  fill=GREY, font=font(11))
    for d, f in zip(panel["distance"], panel["frequency"]):
        if round(f * plot) > 0:
            x = left + d * unit
            draw.rectangle((x, y0 + plot - round(f * plot), x + unit - 1, y0 + plot - 1), fill=BAR)


def distance_figure(panels: list[dict], cols: int, title: str) -> Image.Image:
    """How often each visual token is kept against its distance to the last prompt token.

    panels: one dict per method with 'caption' (a line), 'frequency' (N values in [0, 1], raster
    order) and 'distance' (N ints: each token's distance in positions to the last prompt token).
    One bar per token at x = its distance (0 at the left, so the image's bottom row, nearest the
    text, comes first), stacked panels sharing the x axis; faint lines between grid rows of `cols`
    tokens, and the rows numbered along the top."""
    height_one = 18 + 110 + 10  # a panel: its caption, its plot, the gap below
    largest = max(max(p["distance"]) for p in panels)
    unit = max(1, 600 // (largest + 1))  # px per position: a short sequence is widened to ~600 px
    left, top, right = GUTTER, 30 + 16, GUTTER + (largest + 1) * unit  # below the title, a line of row numbers
    bottom = top + len(panels) * height_one - 10
    figure = Image.new("RGB", (max(right + MARGIN, 360), bottom + 50), BACKGROUND)
    draw = ImageDraw.Draw(figure)
    draw.text((MARGIN, 8), fit(draw, title, 15, figure.width - 2 * MARGIN), fill=INK, font=font(15))
    distance = panels[0]["distance"]  # the rows' positions: the same prompt for every panel
    rows = len(distance) // cols
    spans = [(left + distance[(r + 1) * cols - 1] * unit, left + (distance[r * cols] + 1) * unit)
             for r in range(rows)]  # px: each row's nearest token's left edge, its farthest's right edge
    step = math.ceil((text_width(draw, str(rows - 1), 11) + 6) / (cols * unit))  # row numbers that do not crowd
    draw.text((left - 26, top - 15), "row", fill=GREY, font=font(11))
    for r, (near, far) in enumerate(spans):
        if (rows - 1 - r) % step == 0:
            draw.text(((near + far - text_width(draw, str(r), 11)) // 2, top - 15), str(r), fill=GREY,
                      font=font(11))
    for i, p in enumerate(panels):
        distance_panel(draw, p, top + i * height_one + 18, spans, left, unit, right)
    for d in range(0, largest + 1, tick_step(largest, largest * unit, 60)):
        x = left + d * unit
        draw.line((x, bottom, x, bottom + 4), fill=GREY)
        draw.text((x - text_width(draw, str(d), 11) // 2, bottom + 5), str(d), fill=GREY, font=font(11))
    draw.text((left, bottom + 20), "distance to the last prompt token (positions)", fill=INK, font=font(13))
    vertical_text(figure, "kept in % of images", MARGIN, (top + bottom) // 2)
    return figure


def layers_figure(series: list[tuple[str, list[int]]], title: str) -> Image.Image:
    """The visual tokens each method holds at every decoder layer, as steps: one level per layer.

    series: (label, counts), counts one int per layer, all of the same length. Each series is
    drawn thinner than the one before, on top of it, so lines that coincide show as nested bands."""
    layers, largest = len(series[0][1]), max(1, max(max(counts) for _, counts in series))
    plot, column = 220, max(16, 512 // layers)  # px: the plot's height, one layer's width (64 for 8 layers)
    entries = [(label, {"fill": SERIES[i % len(SERIES)]}) for i, (label, _) in enumerate(series)]
    scratch = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    left, top = GUTTER, 30 + 8
    width = max(left + layers * column, MARGIN + legend_width(scratch, entries)) + MARGIN
    figure = Image.new("RGB", (width, top + plot + 72), BACKGROUND)
    draw = ImageDraw.Draw(figure)
    draw.text((MARGIN, 8), fit(draw, title, 15, figure.width - 2 * MARGIN), fill=INK, font=font(15))
    widths = [2 * (len(series) - 1 - i) + 3 for i in range(len(series))]
    pad = widths[0] // 2 + 2  # the thickest line, at 0 or at the top, stays inside the frame
    y_of = lambda v: top + plot - pad - round(v / largest * (plot - 2 * pad))  # noqa: E731
    for v in range(0, largest + 1, tick_step(largest, plot, 28)):
        draw.line((left, y_of(v), left + layers * column, y_of(v)), fill=FAINT)
        draw.text((left - 6 - text_width(draw, str(v), 11), y_of(v) - 6), str(v), fill=GREY, font=font(11))
    for layer in range(layers):
        x = left + layer * column + column // 2 - text_width(draw, str(layer), 11) // 2
        draw.text((x, top + plot + 6), str(layer), fill=GREY, font=font(11))
    draw.rectangle((left, top, left + layers * column, top + plot), outline=GREY)
    for i, (_, counts) in enumerate(series):
        points = []
        for layer, count in enumerate(counts):
            points += [(left + layer * column, y_of(count)), (left + (layer + 1) * column, y_of(count))]
        draw.line(points, fill=SERIES[i % len(SERIES)], width=widths[i], joint="curve")
    draw.text((left, top + plot + 22), "decoder layer", fill=INK, font=font(13))
    vertical_text(figure, "visual tokens held", MARGIN, top + plot // 2)
    legend(draw, MARGIN, top + plot + 48, entries)
    return figure


def curves_figure(panels: list[dict], title: str, width: int = 330) -> Image.Image:
    """Accuracy (y, 0-100%) against FLOPs reduction (x, %), panels side by side sharing one legend.

    panels: one dict each with 'caption' (a line) and 'series': (label, points), points a list of
    (x %, y %, standard error in points); the same labels, in the same order, in every panel. A
    series is a line through its points in order of x, a dot on each and a bar of +-1 standard
    error; series i has colour SERIES[i] (the legend wraps to the figure's width). width: one
    panel's plot, in px."""
    plot = 220  # px
    xs = [x for panel in panels for _, points in panel["series"] for x, _, _ in points]
    low, high = 10 * math.floor(min(xs) / 10), 10 * math.ceil(max(xs) / 10)  # x spans whole tens
    high = max(high, low + 10)
    left, top, gap = GUTTER, 30 + 22, 40  # below the title, a line of captions; gap between panels
    figure_width = left + len(panels) * (width + gap) - gap + MARGIN
    labels = [label for label, _ in panels[0]["series"]]
    entries = [(label, {"fill": SERIES[i % len(SERIES)]}) for i, label in enumerate(labels)]
    scratch = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    lines = [[]]  # the legend, wrapped: the entries of each line
    for entry in entries:
        if lines[-1] and MARGIN + legend_width(scratch, lines[-1] + [entry]) > figure_width - MARGIN:
            lines.append([])
        lines[-1].append(entry)
    figure = Image.new("RGB", (figure_width, top + plot + 48 + 22 * len(lines)), BACKGROUND)
    draw = ImageDraw.Draw(figure)
    draw.text((MARGIN, 8), fit(draw, title, 15, figure.width - 2 * MARGIN), fill=INK, font=font(15))
    y_of = lambda v: top + plot - round(v / 100 * plot)  # noqa: E731
    for p, panel in enumerate(panels):
        x0 = left + p * (width + gap)
        x_of = lambda v: x0 + round((v - low) / (high - low) * width)  # noqa: E731
        draw.text((x0, top - 20), fit(draw, panel["caption"], 13, width), fill=INK, font=font(13))
        for v in range(0, 101, 20):
            draw.line((x0, y_of(v), x0 + width, y_of(v)), fill=FAINT)
            label = f"{v}%"
            draw.text((x0 - 5 - text_width(draw, label, 11), y_of(v) - 6), label, fill=GREY, font=font(11))
        for v in range(low, high + 1, tick_step(high - low, width, 40)):
            draw.line((x_of(v), top + plot, x_of(v), top + plot + 4), fill=GREY)
            label = f"{v}%"
            draw.text((x_of(v) - text_width(draw, label, 11) // 2, top + plot + 5), label, fill=GREY, font=font(11))
        draw.rectangle((x0, top, x0 + width, top + plot), outline=GREY)
        for i, (_, points) in enumerate(panel["series"]):
            colour, points = SERIES[i % len(SERIES)], sorted(points)
            if len(points) > 1:
                draw.line([(x_of(x), y_of(y)) for x, y, _ in points], fill=colour, width=2)
            for x, y, se in points:
                draw.line((x_of(x), y_of(min(y + se, 100)), x_of(x), y_of(max(y - se, 0))), fill=colour, width=1)
                draw.ellipse((x_of(x) - 3, y_of(y) - 3, x_of(x) + 3, y_of(y) + 3), fill=colour)
        draw.text((x0, top + plot + 20), "FLOPs reduction", fill=INK, font=font(13))
    vertical_text(figure, "accuracy", MARGIN, top + plot // 2)
    for line, row in enumerate(lines):
        legend(draw, MARGIN, top + plot + 44 + 22 * line, row)
    return figure
