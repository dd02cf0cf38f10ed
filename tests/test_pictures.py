# python -m pytest -q tests/test_pictures.py
"""The pictures on inputs small enough to check by hand: patch_map's exact text, the figures' sizes
(from the layout constants: MARGIN 12, GUTTER 64, PANEL 240), and the pixels that carry the meaning."""
from PIL import Image, ImageDraw

from feather_mini import pictures

WHITE = (255, 255, 255)


def test_patch_map_marks_the_target_other_objects_and_background():
    """8x8 image, 2x2 grid of 4 px cells: the target's pixels in cell (0, 0), another object's in cells (0, 1)
    and (1, 1). The target box ends at x2 = 4, exclusive, so cell (0, 1) does not overlap it."""
    image = Image.new("RGB", (8, 8), (40, 40, 40))
    draw = ImageDraw.Draw(image)
    draw.rectangle((1, 1, 2, 2), fill=(235, 205, 40))  # the target; its box (1, 1, 4, 3) stops before x = 4
    draw.point((4, 1), fill=(220, 50, 50))
    draw.rectangle((5, 5, 6, 6), fill=(60, 110, 240))
    assert pictures.patch_cells(image, (2, 2), (1, 1, 4, 3), (40, 40, 40)) == ["o+", ".+"]
    assert pictures.patch_map(image, (2, 2), (1, 1, 4, 3), (40, 40, 40)) == "row  0  o+\nrow  1  .+"


def test_patch_map_needs_a_pixel_not_only_the_box():
    """A cell that overlaps the target box but holds only background stays '.'."""
    image = Image.new("RGB", (8, 8), (0, 0, 0))
    image.putpixel((0, 0), (255, 0, 0))
    assert pictures.patch_map(image, (2, 2), (0, 0, 8, 8), (0, 0, 0)) == "row  0  o.\nrow  1  .."


def test_dropped_later_and_dropped_first_differ_in_hue():
    """1x3 grid on the scenes' background (40, 40, 40), 2 stages: cell 0 kept, cell 1 dropped at the second
    stage (blended half-way to (180, 20, 210), purple), cell 2 at the first (82% to black; Image.blend truncates)."""
    square = Image.new("RGB", (3, 1), (40, 40, 40))
    panel = pictures.token_panel(square, (1, 3), [[2, 1, 0]], 2)
    kept, later, first = panel.getpixel((40, 120)), panel.getpixel((120, 120)), panel.getpixel((200, 120))
    assert (kept, later, first) == ((40, 40, 40), (110, 30, 125), (7, 7, 7))
    assert pictures.tinted((40, 40, 40), pictures.DROPPED_LATER) == later  # the legend's swatch is the same blend
    assert pictures.tinted((40, 40, 40), pictures.DROPPED_FIRST) == first


def test_heatmap_figure_size():
    """2 panels, 1 caption line: width 26 + 12 + 2 x (240 + 12) = 542, raised to the minimum 560; height
    46 (title) + 240 (panel) + 20 (colour bar) + 6 + 17 (caption) + 12 = 341."""
    panels = [{"caption": ["a"], "frequency": [[0.0, 1.0], [0.5, 0.25]]}] * 2
    assert pictures.heatmap_figure(panels, "t").size == (560, 341)


def test_heatmap_panel_scales_to_its_own_maximum():
    """A panel whose largest value is 0.1 draws that cell in the scale's darkest colour; half of it (0.05) is
    ramp(0.5) = (132, 152, 181), half-way from white to (8, 48, 107)."""
    figure = pictures.heatmap_figure([{"caption": ["a"], "frequency": [[0.1, 0.0], [0.05, 0.0]]}], "t")
    x0, y0 = 26 + 12, 46  # the panel's top-left corner; cells of 120 px
    assert figure.getpixel((x0 + 60, y0 + 60)) == pictures.BAR == pictures.ramp(1.0)
    assert figure.getpixel((x0 + 60, y0 + 180)) == (132, 152, 181)
    assert figure.getpixel((x0 + 180, y0 + 60)) == WHITE


def test_heatmap_panel_of_zeros_is_white():
    """An all-zero panel (a stage that never kept a position) draws white cells and a white colour bar,
    instead of dividing by its maximum of 0."""
    figure = pictures.heatmap_figure([{"caption": ["a"], "frequency": [[0.0, 0.0], [0.0, 0.0]]}], "t")
    x0, y0 = 26 + 12, 46
    assert figure.getpixel((x0 + 60, y0 + 60)) == WHITE
    assert figure.getpixel((x0 + 120, y0 + 240 + 6 + 5)) == WHITE  # the middle of the colour bar


def test_distance_figure_size():
    """8 tokens at distances 9..2, 2 panels: 600 // 10 = 60 px per position; width 64 + 10 x 60 + 12 = 676,
    height 46 (title, row numbers) + 2 x (18 + 110 + 10) - 10 + 50 (distance axis) = 362."""
    panel = {"caption": "a", "frequency": [0.5] * 8, "distance": list(range(9, 1, -1))}
    assert pictures.distance_figure([panel, panel], cols=4, title="t").size == (676, 362)


def test_distance_bars_span_the_plot_and_rows_are_marked():
    """Token 0 (distance 9, x = 64 + 9 x 60 = 604) kept always: its bar fills the plot's 110 px (y 64..173);
    token 1 (distance 8, x 544..603) never: nothing drawn. Rows of 4 tokens: the boundary between row 1
    (distances 5..2) and row 0 (9..6) is a faint line at x = 64 + 6 x 60 = 424."""
    panel = {"caption": "a", "frequency": [1.0] + [0.0] * 7, "distance": list(range(9, 1, -1))}
    figure = pictures.distance_figure([panel], cols=4, title="t")
    assert {figure.getpixel((634, y)) for y in range(64, 174)} == {pictures.BAR}
    assert figure.getpixel((634, 63)) == pictures.GREY  # the frame, just above the bar's top
    assert {figure.getpixel((574, y)) for y in range(64, 174)} == {WHITE}
    assert figure.getpixel((424, 100)) == pictures.FAINT


def test_layers_figure_size():
    """8 layers of 64 px: width 64 + 8 x 64 + 12 = 588; height 38 (title) + 220 (plot) + 72 (axis, legend) = 330."""
    series = [("none", [576] * 8), ("fastv", [576] + [144] * 7)]
    assert pictures.layers_figure(series, "t").size == (588, 330)


def test_layers_coinciding_lines_stay_visible():
    """Two series at the same count: the first (5 px wide) shows a 1 px rim either side of the second (3 px),
    drawn on top. Count 4 of 4 lies at y = 38 + 220 - 4 (padding) - 212 = 42."""
    figure = pictures.layers_figure([("a", [4, 4]), ("b", [4, 4])], "t")
    column = [figure.getpixel((164, y)) for y in range(40, 45)]
    assert column == [pictures.SERIES[0]] + [pictures.SERIES[1]] * 3 + [pictures.SERIES[0]]


def test_tick_step():
    """Ticks at least `gap` px apart: 581 positions at 1 px each with 60 px gaps step by 100; 4 tokens over
    220 px with 28 px gaps by 1."""
    assert pictures.tick_step(581, 581, 60) == 100
    assert pictures.tick_step(4, 220, 28) == 1


def test_curves_figure_size_and_legend_lines():
    """One panel of 330 px: width 64 + 330 + 12 = 406; height 52 (title, captions) + 220 (plot) + 48 (axis)
    + 22 per legend line = 342. Two panels (gap 40): 64 + 2 x 330 + 40 + 12 = 776; eight labels of about
    175 px each (swatch, text, gap) wrap to two lines of four: 342 + 22 = 364."""
    series = [("s", [(20.0, 50.0, 10.0), (40.0, 100.0, 0.0)])]
    assert pictures.curves_figure([{"caption": "a", "series": series}], "t").size == (406, 342)
    many = [(f"a long label number {i}", [(20.0, 50.0, 1.0)]) for i in range(8)]
    two = pictures.curves_figure([{"caption": "a", "series": many}] * 2, "t")
    assert two.size == (776, 364)


def test_curves_points_and_error_bars_land_on_their_values():
    """x spans 20..40% over 330 px from x = 64, y 0..100% over 220 px up from y = 272: the point
    (20%, 50%) is a dot at (64, 162), its bar of 10 points runs from y 140 to 184; (40%, 100%) at (394, 52)."""
    series = [("s", [(20.0, 50.0, 10.0), (40.0, 100.0, 0.0)])]
    figure = pictures.curves_figure([{"caption": "a", "series": series}], "t")
    colour = pictures.SERIES[0]
    assert figure.getpixel((64, 162)) == colour and figure.getpixel((394, 52)) == colour
    assert {figure.getpixel((64, y)) for y in (141, 150, 175, 183)} == {colour}  # the bar, over the frame
    assert figure.getpixel((64, 190)) == pictures.GREY  # below the bar: the frame again
