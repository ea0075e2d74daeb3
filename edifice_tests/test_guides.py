"""Execute the code in the guides (``guides/*.md``) and in ``README.md``, like notebooks.

Every fenced block whose info string is exactly ``python`` runs; blocks fenced as
``python no-run``, ``bash``, ``text`` or anything else are skipped. The blocks of one file run
in order in one shared namespace, in a fresh temporary working directory, under a per-file time
limit. Code is compiled with the markdown file as its file name and padded so that a traceback
points at the real line of the ``.md`` file.

Besides running the examples, the tests keep the guides honest:

* every ``edifice.xxx.yyy`` named in backticks resolves to a real module attribute (a guide must
  never document a function that does not exist);
* relative links between guides point to files that exist;
* every family guide has the sections of the guide template (STYLE.md);
* ``guides/README.md`` links every guide.
"""

from __future__ import annotations

import contextlib
import importlib
import re
import signal
import threading
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
GUIDES = ROOT / "guides"
README = ROOT / "README.md"

# Seconds allowed for all the blocks of one file. The guides aim at a few seconds each on two CPU
# cores; the limit is generous so that a slow machine does not fail a correct guide.
FILE_TIMEOUT_S = 120

# Sections of the guide template (STYLE.md), matched as prefixes of ``## `` headings, in order.
TEMPLATE_SECTIONS = (
    "Overview",
    "Concepts",
    "Evolution",
    "When to use",
    "Key equations",
    "Complexity",
    "Module reference",
    "Cross-references",
    "Reading list",
)

_FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})(?P<info>[^`\n]*)$")


def extract_blocks(text: str) -> list[tuple[int, str, str]]:
    """Fenced code blocks of a markdown text as ``(first_code_line (1-based), info, code)``."""
    blocks = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if m is None:
            i += 1
            continue
        fence, info = m["fence"], m["info"].strip()
        start = i + 1
        j = start
        while j < len(lines) and not (
            lines[j].strip().startswith(fence[0] * len(fence)) and lines[j].strip().strip(fence[0]) == ""
        ):
            j += 1
        blocks.append((start + 1, info, "\n".join(lines[start:j])))
        i = j + 1
    return blocks


def runnable_blocks(path: Path) -> list[tuple[int, str]]:
    """The ``python`` blocks of ``path`` (info string exactly "python") as ``(line, code)``."""
    return [(line, code) for line, info, code in extract_blocks(path.read_text()) if info == "python"]


def _guide_files() -> list[Path]:
    return sorted(GUIDES.glob("*.md")) if GUIDES.is_dir() else []


def _family_guides() -> list[Path]:
    return [p for p in _guide_files() if p.name != "README.md"]


def _doc_files() -> list[Path]:
    return _guide_files() + [README]


@contextlib.contextmanager
def _time_limit(seconds: int, what: str):
    """Raise ``TimeoutError`` after ``seconds`` (SIGALRM, main thread only; otherwise no limit)."""
    usable = hasattr(signal, "SIGALRM") and threading.current_thread() is threading.main_thread()
    if not usable:
        yield
        return

    def handler(signum, frame):
        raise TimeoutError(f"{what} took longer than {seconds} s")

    old = signal.signal(signal.SIGALRM, handler)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@contextlib.contextmanager
def _isolated_torch_state():
    """Run on one intra-op thread and restore the global torch state a guide may change.

    The guides use tiny tensors, for which extra threads only add synchronisation; on a loaded
    two-core machine two threads made the examples tens of times slower.
    """
    dtype = torch.get_default_dtype()
    grad = torch.is_grad_enabled()
    rng = torch.get_rng_state()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.set_default_dtype(dtype)
        torch.set_grad_enabled(grad)
        torch.set_rng_state(rng)


def _ids(paths: list[Path]) -> list[str]:
    return [str(p.relative_to(ROOT)) for p in paths]


@pytest.mark.parametrize("path", _doc_files(), ids=_ids(_doc_files()))
def test_examples_run(path: Path, tmp_path, monkeypatch):
    """All ``python`` blocks of one file run, in order, in one namespace, in a temp directory."""
    if not path.exists():
        pytest.skip(f"{path.relative_to(ROOT)} does not exist yet")
    blocks = runnable_blocks(path)
    if not blocks:
        pytest.skip(f"{path.relative_to(ROOT)} has no python blocks")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__guide__"}
    start, cpu_start = time.perf_counter(), time.process_time()
    with _isolated_torch_state(), _time_limit(FILE_TIMEOUT_S, str(path.relative_to(ROOT))):
        for line, code in blocks:
            # Pad so that tracebacks report the line number inside the markdown file.
            source = "\n" * (line - 1) + code + "\n"
            exec(compile(source, str(path), "exec"), namespace)  # noqa: S102 - executing our own docs
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    # CPU time is what the examples cost on an idle machine (one thread); wall time includes waiting.
    print(f"{path.relative_to(ROOT)}: {len(blocks)} blocks in {wall:.1f} s wall, {cpu:.1f} s CPU")


_API_NAME = re.compile(r"`(edifice(?:\.[A-Za-z_][A-Za-z0-9_]*)+)(?:\([^`]*\))?`")


def _resolve(dotted: str) -> bool:
    """Whether ``dotted`` names an importable module or an attribute of one."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


# Short module names the guides use in prose (`ddpm.q_sample`, `fm.path(...)`) and what they stand for.
_SHORT = {
    "ddpm": "edifice.generative.ddpm",
    "ddim": "edifice.generative.ddim",
    "flow_matching": "edifice.generative.flow_matching",
    "fm": "edifice.generative.flow_matching",
    "schedules": "edifice.schedules",
    "integrators": "edifice.integrators",
    "toy2d": "edifice.data.toy2d",
    "distances": "edifice.metrics.distances",
}
_SHORT_NAME = re.compile(r"`(" + "|".join(_SHORT) + r")\.([A-Za-z_][A-Za-z0-9_]*)(?:\([^`]*\))?`")


def documented_names(text: str) -> set[str]:
    """Dotted names a markdown text documents in backticks, short module names expanded."""
    names = set(_API_NAME.findall(text))
    names |= {f"{_SHORT[mod]}.{attr}" for mod, attr in _SHORT_NAME.findall(text)}
    return names


@pytest.mark.parametrize("path", _doc_files(), ids=_ids(_doc_files()))
def test_documented_names_exist(path: Path):
    """Every ``edifice.a.b`` (or ``ddpm.x``, ``fm.y``, ...) named in backticks exists."""
    if not path.exists():
        pytest.skip(f"{path.relative_to(ROOT)} does not exist yet")
    missing = sorted(n for n in documented_names(path.read_text()) if not _resolve(n))
    assert not missing, f"{path.name} documents names that do not exist: {missing}"


_LINK = re.compile(r"\]\((?!https?://|mailto:|#)([^)#\s]+)(?:#[^)]*)?\)")


@pytest.mark.parametrize("path", _doc_files(), ids=_ids(_doc_files()))
def test_relative_links_resolve(path: Path):
    if not path.exists():
        pytest.skip(f"{path.relative_to(ROOT)} does not exist yet")
    broken = [t for t in _LINK.findall(path.read_text()) if not (path.parent / t).exists()]
    assert not broken, f"{path.name} links to missing files: {broken}"


@pytest.mark.parametrize("path", _family_guides(), ids=_ids(_family_guides()))
def test_guide_follows_template(path: Path):
    headings = [h.strip() for h in re.findall(r"^## (.+)$", path.read_text(), flags=re.M)]
    positions = []
    for section in TEMPLATE_SECTIONS:
        hits = [i for i, h in enumerate(headings) if h.startswith(section)]
        assert hits, f"{path.name} lacks a '## {section}' section (guide template, STYLE.md)"
        positions.append(hits[0])
    assert positions == sorted(positions), f"{path.name}: template sections out of order: {headings}"


def test_index_lists_every_guide():
    index = GUIDES / "README.md"
    assert index.exists(), "guides/README.md (the index) is missing"
    text = index.read_text()
    unlisted = [p.name for p in _family_guides() if f"({p.name})" not in text]
    assert not unlisted, f"guides/README.md does not link: {unlisted}"


def test_documented_names_parsing():
    text = "`edifice.schedules.make_schedule` `ddpm.q_sample` `fm.sample(net, shape)` `ddim.build is ddpm.build`"
    assert documented_names(text) == {
        "edifice.schedules.make_schedule",
        "edifice.generative.ddpm.q_sample",
        "edifice.generative.flow_matching.sample",
    }
    assert _resolve("edifice.generative.ddpm.q_sample") and not _resolve("edifice.generative.ddpm.no_such_function")


def test_block_extraction():
    """The extractor keeps info strings apart and ignores non-python fences."""
    text = (
        "intro\n```python\nx = 1\n```\n\n```python no-run\nraise SystemExit\n```\n"
        "```bash\nedifice list\n```\n````python\ny = '```'\n````\n"
    )
    blocks = extract_blocks(text)
    assert [(info, code) for _, info, code in blocks] == [
        ("python", "x = 1"), ("python no-run", "raise SystemExit"), ("bash", "edifice list"), ("python", "y = '```'"),
    ]
    assert blocks[0][0] == 3  # line of "x = 1"
