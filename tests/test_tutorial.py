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

TUTORIAL = Path(__file__).resolve().parent.parent / "tutorial"
CHAPTERS = sorted(TUTORIAL.glob("[0-9][0-9]-*.md"))
NOT_RUN = "# Not run by the tests"
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


@pytest.mark.parametrize("chapter", CHAPTERS, ids=[c.name for c in CHAPTERS])
def test_chapter(chapter, tmp_path, monkeypatch):
    """Every python block of the chapter runs, and prints what the chapter shows."""
    monkeypatch.chdir(tmp_path)
    assert run_chapter(chapter.name, chapter.read_text()) > 0, f"{chapter.name} has no python block to run"


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


def test_images_linked_from_chapters_exist():
    """Every picture a chapter embeds is committed next to it."""
    for chapter in CHAPTERS:
        for target in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", chapter.read_text()):
            assert (TUTORIAL / target).is_file(), f"{chapter.name} embeds {target}, which is not in tutorial/"


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
