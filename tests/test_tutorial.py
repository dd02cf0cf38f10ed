# python -m pytest tests/test_tutorial.py -q
"""The tutorial runs: every ```python block of tutorial/NN-*.md, chapter by chapter, with each
printed output compared against the ```text block that follows it.

Rules the chapters follow (and this file enforces):
- The blocks of one chapter run in order in one namespace; each chapter starts afresh.
- A ```python block whose first line starts with NOT_RUN is shown to the reader, never run.
- The first fenced block after a ```python block, when its info string is exactly `text`,
  is that block's output and is compared exactly (trailing spaces and blank edge lines
  aside). `text unchecked` marks output that varies (timings): shown, never compared.
- A block with no output block after it must print nothing, so no output goes stale unseen.
- Blocks run with the working directory set to a temporary folder, so a chapter that
  writes a file does not touch the repository.
"""
import contextlib
import difflib
import io
import re
import traceback
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

from conftest import FEATHER_SMOL_MISSING

TUTORIAL = Path(__file__).resolve().parent.parent / "tutorial"
CHAPTERS = sorted(TUTORIAL.glob("[0-9][0-9]-*.md"))
NOT_RUN = "# Not run by the tests"
SAVED_PICTURE = re.compile(r"\.save\(\"([\w.-]+\.png)\"\)")  # a block that draws the picture it shows
FENCE = re.compile(r"^```(.*)$")


@dataclass
class Block:
    number: int  # 1-based among the chapter's python blocks, as the failure messages count them
    code: str
    expected: str | None  # the checked output, or None when there is none (or it is unchecked)
    run: bool
    unchecked: bool = False  # its output is shown as `text unchecked` (timings): printed, never compared


def fenced_blocks(markdown: str) -> list[tuple[str, str]]:
    """(info string, body) of every ``` fenced block, in order."""
    blocks, info, body = [], None, []
    for line in markdown.splitlines():
        match = FENCE.match(line)
        if info is None and match:
            info, body = match.group(1).strip(), []
        elif info is not None and line.rstrip() == "```":
            blocks.append((info, "\n".join(body)))
            info = None
        elif info is not None:
            body.append(line)
    if info is not None:
        raise ValueError(f"a ```{info} block is never closed")
    return blocks


def python_blocks(markdown: str) -> list[Block]:
    """The python blocks, each with the checked output that follows it, if any."""
    fenced, blocks = fenced_blocks(markdown), []
    for i, (info, body) in enumerate(fenced):
        if info != "python":
            continue
        following = fenced[i + 1] if i + 1 < len(fenced) else None
        expected = following[1] if following is not None and following[0] == "text" else None
        unchecked = following is not None and following[0] == "text unchecked"
        run = not body.lstrip().startswith(NOT_RUN)
        blocks.append(Block(len(blocks) + 1, body, expected, run, unchecked))
    return blocks


def normalized(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.strip("\n").splitlines()).strip("\n")


def run_chapter(name: str, markdown: str) -> int:
    """Run a chapter's blocks in one namespace; raise AssertionError naming the chapter and block
    when a block raises or prints other than its output block. Returns the blocks run."""
    namespace = {"__name__": "__tutorial__"}
    ran = 0
    for block in python_blocks(markdown):
        if not block.run:
            continue
        where = f"{name}, python block {block.number}"
        stdout = io.StringIO()
        try:
            with contextlib.redirect_stdout(stdout):
                exec(compile(block.code, f"<{where}>", "exec"), namespace)
        except Exception as e:
            raise AssertionError(f"{where} raised {type(e).__name__}: {e}\n{traceback.format_exc()}\n"
                                 f"printed before that:\n{stdout.getvalue()}") from e
        ran += 1
        if block.expected is None and not block.unchecked and stdout.getvalue().strip():
            raise AssertionError(f"{where} printed output that the chapter does not show (add a ```text block "
                                 f"after it, or `text unchecked` for timings):\n{stdout.getvalue()}")
        if block.expected is not None and normalized(stdout.getvalue()) != normalized(block.expected):
            diff = "\n".join(difflib.unified_diff(normalized(block.expected).splitlines(),
                                                  normalized(stdout.getvalue()).splitlines(),
                                                  "shown in the chapter", "printed now", lineterm=""))
            raise AssertionError(f"{where}: its output differs from the text block shown after it\n{diff}")
    return ran


ACCURACY = re.compile(r"(\d+\.\d)% ± (\d+\.\d) \((\d+)/(\d+)\)")  # evaluate.with_se: "61.5% ± 3.4 (123/200)"
TABLE_CELL = re.compile(r"^(\d+\.\d) ± (\d+\.\d)$")  # evaluate.table: "61.5 ± 3.4", its n in the header
HEADER_COUNT = re.compile(r"\(n=(\d+)\)")
COUNTED = re.compile(r"\d+\.\d%? \(\d+/\d+\)")  # any "p (hits/n)": each must be part of an ACCURACY
PROSE_ACCURACY = re.compile(r"(\d+\.\d)%\s+±\s+(\d+\.\d)")  # a line may break inside one


def percent(hits: int, n: int) -> tuple[str, str]:
    """(p, se) as evaluate prints them: percentages with one decimal."""
    p = hits / n
    return f"{100 * p:.1f}", f"{100 * (p * (1 - p) / n) ** 0.5:.1f}"


def check_standard_errors(output: str, where: str) -> int:
    """Every accuracy in an output block carries a standard error that its hits and count give back:
    "p% ± se (hits/n)" in text, "p ± se" in a table column whose header says (n=...). A "±" in any other
    form fails, so that no error bar goes unchecked. Returns how many accuracies were checked."""
    checked, counts = 0, None
    for line in output.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if any(HEADER_COUNT.search(c) for c in cells):
                counts = [int(m.group(1)) if (m := HEADER_COUNT.search(c)) else None for c in cells]
                continue
            for column, cell in enumerate(cells):
                if (match := TABLE_CELL.match(cell)) is None:
                    continue
                n = counts[column] if counts and column < len(counts) else None
                assert n, f"{where}: table cell {cell!r} has no (n=...) in its column's header"
                fits = [h for h in range(n + 1) if percent(h, n)[0] == match.group(1)]
                assert fits, f"{where}: {cell!r} is no share of n={n} questions"
                assert percent(fits[0], n)[1] == match.group(2), \
                    f"{where}: {cell!r} with n={n}: the standard error of {match.group(1)}% is {percent(fits[0], n)[1]}"
                checked += 1
        else:
            counts = None  # a table's header counts end with the table
            assert len(COUNTED.findall(line)) == len(ACCURACY.findall(line)), \
                f"{where}: an accuracy printed with its count but without its standard error: {line!r}"
            for match in ACCURACY.finditer(line):
                p, se, hits, n = match.group(1), match.group(2), int(match.group(3)), int(match.group(4))
                assert (p, se) == percent(hits, n), f"{where}: {match.group(0)!r}: {hits}/{n} gives {percent(hits, n)}"
                checked += 1
        plus_minus = line.count("±")
        well_formed = len(ACCURACY.findall(line)) if not line.startswith("|") else \
            sum(1 for c in line.strip("|").split("|") if TABLE_CELL.match(c.strip()))
        assert plus_minus == well_formed, f"{where}: a ± that no count comes with: {line!r}"
    return checked


NEEDS_FEATHER_SMOL = 'load_pretrained("feather-smol")'  # a chapter that reads feather-smol, built by two fetches


@pytest.mark.parametrize("chapter", CHAPTERS, ids=[c.name for c in CHAPTERS])
def test_chapter(chapter, tmp_path, monkeypatch):
    """Every python block of the chapter runs, and prints what the chapter shows (a chapter on
    feather-smol is skipped, with the commands that build it, where it is not built)."""
    if NEEDS_FEATHER_SMOL in chapter.read_text() and FEATHER_SMOL_MISSING:
        pytest.skip(FEATHER_SMOL_MISSING)
    monkeypatch.chdir(tmp_path)
    assert run_chapter(chapter.name, chapter.read_text()) > 0, f"{chapter.name} has no python block to run"
    for name in SAVED_PICTURE.findall(chapter.read_text()):  # drawn now in tmp_path: the committed one, pixel for pixel
        with Image.open(tmp_path / name) as drawn, Image.open(TUTORIAL / "images" / name) as committed:
            assert drawn.size == committed.size and drawn.tobytes() == committed.tobytes(), \
                f"tutorial/images/{name} is not what {chapter.name} draws now: run its block from tutorial/images"


def test_there_are_eight_chapters_and_an_index():
    """tutorial/01-... to 08-..., each listed in tutorial/README.md."""
    assert [c.name[:2] for c in CHAPTERS] == [f"{n:02d}" for n in range(1, 9)]
    index = (TUTORIAL / "README.md").read_text()
    for chapter in CHAPTERS:
        assert f"({chapter.name})" in index, f"tutorial/README.md does not link {chapter.name}"


def test_each_chapter_ends_with_what_you_should_now_understand():
    """The last section of every chapter sums it up for the reader."""
    for chapter in CHAPTERS:
        headings = re.findall(r"^## (.+)$", chapter.read_text(), flags=re.MULTILINE)
        last = headings[-1] if headings else None
        assert last == "What you should now understand", f"{chapter.name}: its last section is {last!r}"


def test_printed_accuracies_carry_standard_errors_a_reader_can_recompute():
    """Every accuracy the chapters print comes with its standard error and the count it is over."""
    checked = 0
    for chapter in CHAPTERS:
        for info, body in fenced_blocks(chapter.read_text()):
            if info == "text":
                checked += check_standard_errors(body, chapter.name)
    assert checked == 318, f"{checked} accuracies in the chapters' outputs, not 318: update the count on purpose"


def prose(markdown: str) -> str:
    """The chapter without its fenced blocks: what the reader reads as text."""
    return re.sub(r"^```.*?^```$", "", markdown, flags=re.MULTILINE | re.DOTALL)


def test_accuracies_quoted_in_the_prose_are_ones_the_chapter_printed():
    """A "61.5% ± 3.4" in a chapter's text appears, with the same error, in one of its output blocks."""
    for chapter in CHAPTERS:
        markdown = chapter.read_text()
        printed = "\n".join(body for info, body in fenced_blocks(markdown) if info == "text")
        for p, se in PROSE_ACCURACY.findall(prose(markdown)):
            assert f"{p}% ± {se}" in printed or f"| {p} ± {se} |" in printed, \
                f"{chapter.name} quotes {p}% ± {se}, which none of its output blocks prints"


def test_standard_error_check_catches_a_wrong_error_and_a_bare_one():
    """The check above can fail: a wrong standard error, a share no count gives, a ± without a count."""
    table = "| m | acc (n=50) |\n|---|---:|\n| a | 60.0 ± 6.9 |"
    assert check_standard_errors("fastv 61.5% ± 3.4 (123/200)\n" + table, "x") == 2
    wrong = [("fastv 61.5% ± 3.5 (123/200)", r"123/200 gives \('61.5', '3.4'\)"),
             ("| m | acc (n=50) |\n| a | 60.0 ± 7.0 |", r"the standard error of 60.0% is 6.9"),
             ("| m | acc (n=50) |\n| a | 61.3 ± 6.9 |", r"'61.3 ± 6.9' is no share of n=50"),
             ("boxes 61.5% ± 3.4", r"a ± that no count comes with"),
             ("boxes 61.5% (123/200)", r"with its count but without its standard error"),
             ("| m | acc (n=50) |\n\n| a | 60.0 ± 6.9 |", r"has no \(n=...\) in its column's header")]
    for output, message in wrong:
        with pytest.raises(AssertionError, match=message):
            check_standard_errors(output, "x")


def test_images_linked_from_chapters_exist():
    """Every picture a chapter embeds is committed next to it."""
    for chapter in CHAPTERS:
        for target in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", chapter.read_text()):
            assert (TUTORIAL / target).is_file(), f"{chapter.name} embeds {target}, which is not in tutorial/"


def test_pictures_drawn_by_a_block_are_the_ones_committed():
    """A block that saves NAME.png prints the picture's size, and tutorial/images/NAME.png has that size
    (test_chapter checks it pixel for pixel against what the block draws now)."""
    saved = 0
    for chapter in CHAPTERS:
        for block in python_blocks(chapter.read_text()):
            for name in SAVED_PICTURE.findall(block.code):
                committed = TUTORIAL / "images" / name
                assert committed.is_file(), f"{chapter.name}, python block {block.number}: {committed} is not committed"
                with Image.open(committed) as picture:
                    size = picture.size
                assert block.expected is not None and str(size) in block.expected, \
                    f"{chapter.name}, python block {block.number} prints no size {size} of {name}"
                saved += 1
    assert saved == 5  # 04-kept-vs-distance, 05-accuracy-vs-flops, 05-criteria-vs-flops, 06-stage2-sweep, 07-tokens-per-layer


def test_pictures_made_by_commands_have_the_sizes_of_their_layout():
    """The demo's and the heatmap's pictures in tutorial/images, at the sizes their layout gives
    (pictures.py: panels of 240 px with 12 px margins), so a stale or wrong picture shows."""
    expected = {"04-fastv-demo.png": (768, 407),  # demo, 3 methods: 12 + 3 x (240 + 12) px wide
                "06-feather-demo.png": (1020, 407),  # demo, 4 methods: 12 + 4 x 252
                "05-heatmap.png": (1550, 375),  # heatmap, 6 panels: 26 + 12 + 6 x 252
                "06-heatmap-last.png": (794, 375)}  # heatmap, 3 panels: 26 + 12 + 3 x 252
    for name, size in expected.items():
        with Image.open(TUTORIAL / "images" / name) as picture:
            assert picture.size == size, f"tutorial/images/{name} is {picture.size}, expected {size}"
    drawn_by_blocks = ("04-kept-vs-distance.png", "05-accuracy-vs-flops.png", "05-criteria-vs-flops.png",
                       "06-stage2-sweep.png", "07-tokens-per-layer.png")  # checked pixel for pixel by test_chapter
    assert sorted(expected) == sorted(p.name for p in (TUTORIAL / "images").glob("*.png")
                                      if p.name not in drawn_by_blocks)


SAMPLE = """# A chapter
```python
x = 6 * 7
print(x)
```
```text
42
```
Output (varies, not checked):
```text unchecked
anything at all
```
```python
print(x + 1)
print("anything")
```
```text unchecked
not compared
```
```python
# Not run by the tests: it would fail.
raise RuntimeError("never run")
```
```python
print(x - 2)
```
```text
40
```
"""


def test_runner_checks_outputs_and_skips_marked_blocks():
    """A correct sample chapter passes: two checked outputs, one unchecked, one block not run."""
    blocks = python_blocks(SAMPLE)
    assert [(b.number, b.expected, b.run, b.unchecked) for b in blocks] == [
        (1, "42", True, False), (2, None, True, True), (3, None, False, False), (4, "40", True, False)]
    assert run_chapter("sample.md", SAMPLE) == 3


def test_runner_reports_a_wrong_output_with_chapter_and_block():
    """A block that prints other than its output block fails, naming the chapter and the block."""
    with pytest.raises(AssertionError, match=r"sample\.md, python block 4: its output differs") as error:
        run_chapter("sample.md", SAMPLE.replace("40\n", "39\n"))
    assert "-39" in str(error.value) and "+40" in str(error.value)


def test_runner_refuses_output_the_chapter_does_not_show():
    """A block that prints but has no output block after it fails: its output could go stale unseen."""
    with pytest.raises(AssertionError, match=r"sample\.md, python block 4 printed output that the chapter does not"):
        run_chapter("sample.md", SAMPLE.replace("```text\n40\n```\n", ""))


def test_runner_reports_an_exception_with_chapter_and_block():
    """A block that raises fails, naming the chapter and the block."""
    with pytest.raises(AssertionError, match=r"sample\.md, python block 2 raised NameError"):
        run_chapter("sample.md", SAMPLE.replace("print(x + 1)", "print(y + 1)"))
