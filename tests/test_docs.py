"""The documentation site builds strictly, and every code block in it runs.

* ``mkdocs build --strict`` (the site's pages, and the API reference that
  mkdocstrings generates from the docstrings) must succeed: a broken link, a
  docstring griffe cannot parse or a missing page fails the suite.
* Every fenced ``python`` block of ``README.md`` and ``docs/**/*.md`` is
  executed, page by page, in order, in one fresh namespace per page (a page's
  later blocks may use its earlier ones), in a temporary working directory.
* A block that cannot run in CI carries a visible marker on the line(s) just
  before its fence: ``<!-- no-run: why -->``. It is listed by
  :func:`test_no_run_block_still_parses` (one test id per block) and must
  still parse as Python.
* ``<!-- ci-replace: OLD => NEW -->`` before a block runs it with ``OLD``
  replaced by ``NEW`` (a long run shortened); ``OLD`` must occur in the block,
  so the page cannot drift away from what is tested.
* Shell blocks (``bash``) are not run (they are full training runs); each
  command is checked instead: ``make T`` needs the Makefile target,
  ``artifex-rl ...`` must parse with the CLI's own argument parser, a
  ``python path/script.py --flag`` needs the script and each flag in its
  source, ``tox -e E`` needs the tox environment.
"""

from __future__ import annotations

import ast
import dataclasses
import os
import re
import shlex
import subprocess
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"

_FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```[ \t]*$", re.S | re.M)
_COMMENT = re.compile(r"<!--\s*(no-run|ci-replace|no-check)\s*:\s*(.*?)\s*-->", re.S)


@dataclasses.dataclass
class Block:
    page: str  # path relative to the repository root
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    no_run: str | None = None
    no_check: str | None = None
    replacements: list[tuple[str, str]] = dataclasses.field(default_factory=list)

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"

    def runnable_code(self) -> str:
        code = self.code
        for old, new in self.replacements:
            assert old in code, f"{self.id}: ci-replace target {old!r} is not in the block"
            code = code.replace(old, new)
        return code


def _markers_before(text: str, start: int) -> list[tuple[str, str]]:
    """The marker comments on the lines right above offset ``start`` (blank lines end the run)."""
    markers = []
    lines = text[:start].split("\n")[:-1]
    while lines and lines[-1].strip().startswith("<!--") and lines[-1].strip().endswith("-->"):
        markers.extend(_COMMENT.findall(lines.pop()))
    return markers


def blocks_of(path: Path) -> list[Block]:
    text = path.read_text()
    out = []
    for match in _FENCE.finditer(text):
        block = Block(
            page=str(path.relative_to(ROOT)),
            line=text[: match.start()].count("\n") + 1,
            lang=match.group(1),
            code=match.group(2),
        )
        for kind, value in _markers_before(text, match.start()):
            if kind == "no-run":
                block.no_run = value
            elif kind == "no-check":
                block.no_check = value
            else:
                old, sep, new = value.partition("=>")
                assert sep, f"{block.id}: ci-replace needs 'OLD => NEW', got {value!r}"
                block.replacements.append((old.strip(), new.strip()))
        out.append(block)
    return out


def doc_pages() -> list[Path]:
    pages = [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]
    return [p for p in pages if "_ext" not in p.parts]


ALL_BLOCKS = [b for page in doc_pages() for b in blocks_of(page)]
PYTHON = [b for b in ALL_BLOCKS if b.lang == "python"]
SHELL = [b for b in ALL_BLOCKS if b.lang in ("bash", "sh", "shell")]
PAGES_WITH_CODE = sorted({b.page for b in PYTHON if b.no_run is None})


def test_blocks_are_found_and_fenced_with_a_language():
    assert len(PYTHON) >= 20 and len(SHELL) >= 5
    unlabelled = [b.id for b in ALL_BLOCKS if not b.lang]
    assert not unlabelled, f"fence these blocks with a language (python, bash, text): {unlabelled}"
    for b in ALL_BLOCKS:
        if b.lang not in ("python", "bash", "sh", "shell"):
            assert b.no_run is None, f"{b.id}: no-run marks python/shell blocks only"


# --------------------------------------------------------------------------- #
# The site
# --------------------------------------------------------------------------- #
def test_site_builds_strictly(tmp_path):
    pytest.importorskip("mkdocs", reason="mkdocs is not installed (pip install -e '.[docs]')")
    pytest.importorskip("mkdocstrings_handlers.python", reason="mkdocstrings[python] is not installed")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    reference = (tmp_path / "site" / "reference" / "rl" / "index.html").read_text()
    # mkdocstrings rendered the signatures and the docstrings' Args tables, not raw markdown
    assert "REINFORCETrainer" in reference and "compute_returns" in reference
    assert "doc-signature" in reference and "Parameters" in reference
    assert ":class:`" not in reference and ":meth:`" not in reference


# --------------------------------------------------------------------------- #
# Python blocks
# --------------------------------------------------------------------------- #
@pytest.fixture
def docs_env(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.syspath_prepend(str(ROOT))
    return tmp_path


@pytest.mark.parametrize("page", PAGES_WITH_CODE)
def test_page_code_runs(page, docs_env, monkeypatch):
    """Every runnable python block of ``page``, in order, in one fresh module's namespace."""
    module = types.ModuleType("docs_page")  # a real module: dataclasses defined on a page resolve it
    monkeypatch.setitem(sys.modules, module.__name__, module)
    for block in (b for b in PYTHON if b.page == page and b.no_run is None):
        code = compile(block.runnable_code(), block.id, "exec")
        try:
            exec(code, module.__dict__)
        except Exception as exc:
            raise AssertionError(f"the python block at {block.id} failed: {type(exc).__name__}: {exc}") from exc


@pytest.mark.parametrize("block", [b for b in PYTHON if b.no_run is not None], ids=lambda b: b.id)
def test_no_run_block_still_parses(block):
    """Blocks marked ``<!-- no-run: why -->`` are listed here (one id each) and must parse."""
    assert block.no_run, f"{block.id}: say why the block cannot run"
    ast.parse(block.code, block.id)


# --------------------------------------------------------------------------- #
# Shell blocks
# --------------------------------------------------------------------------- #
def _commands(block: Block) -> list[list[str]]:
    commands = []
    for raw in block.code.replace("\\\n", " ").splitlines():
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        for part in re.split(r";|&&", line):
            words = shlex.split(part.strip())
            while words and (words[0] in ("for", "do", "done", "then", "fi") or re.fullmatch(r"\w+=\S*", words[0])):
                words = [] if words[0] == "for" else words[1:]  # loops, and env settings (JAX_PLATFORMS=cpu)
            if words:
                commands.append([re.sub(r"\$\{?\w+\}?", "1", w) for w in words])
    return commands


def _check_command(words: list[str], where: str) -> None:
    program = words[0].removeprefix(".venv/bin/")
    if re.fullmatch(r"\.bench-envs/\w+/bin/python3?", program):  # the bench-only venvs `make bench` creates
        program = "python"
    args = words[1:]
    if program == "make":
        targets = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.M))
        for target in (a for a in args if "=" not in a):  # VAR=value arguments are not targets
            assert target in targets, f"{where}: make target {target!r} is not in the Makefile"
    elif program == "artifex-rl":
        from artifex_rl.cli import build_parser

        try:
            build_parser().parse_args(args)
        except SystemExit as exc:
            raise AssertionError(f"{where}: `artifex-rl {' '.join(args)}` does not parse") from exc
    elif program in ("python", "python3"):
        if args[:1] == ["-m"]:
            return
        script = ROOT / args[0]
        assert script.is_file(), f"{where}: {args[0]} does not exist"
        source = script.read_text()
        for flag in (a for a in args[1:] if a.startswith("--")):
            assert f'"{flag.split("=")[0]}"' in source, f"{where}: {args[0]} has no option {flag}"
    elif program == "tox":
        envs = ",".join(a for a in args if not a.startswith("-")).split(",")
        ini = (ROOT / "tox.ini").read_text()
        for env in envs:
            assert env == "py311" or f"[testenv:{env}]" in ini, f"{where}: no tox environment {env!r}"
    elif program in ("ruff", "pytest", "wandb", "pip"):
        return
    else:
        raise AssertionError(f"{where}: unknown command {program!r}; add a check or mark the block no-check")


@pytest.mark.parametrize("block", SHELL, ids=lambda b: b.id)
def test_shell_commands_exist(block):
    if block.no_check:
        pytest.skip(f"no-check: {block.no_check}")
    for words in _commands(block):
        _check_command(words, block.id)
