"""The documentation stays true: links resolve, the README stays short, and its examples run.

- Every relative link in ``README.md`` and ``docs/*.md`` points at an existing file, and its ``#anchor`` (if any) at
  a heading of that file (GitHub's anchor rules). Links inside code are not links.
- The README has at most 200 lines, names only repository paths that exist, and carries no work-diary traces.
- The README's ``mpq quantize`` example runs. It is taken from the README as written, and two flags are appended so
  that it stays under about a minute on 2 cores: ``--num-calib 32`` (instead of the quick preset's 256 images) and
  ``--range-search minmax`` (the fast calibration instead of the output-aware search). Its ``--output`` goes to a
  temporary folder. The README's command itself took about 1.5 minutes on a busy 2-core machine.
- The README's ``curl`` job submission is sent, as written (method, path, headers, body), to an in-process app and
  must be answered ``202`` with a queued job.
- The scripts shown in ``docs/service.md`` are ``examples/`` verbatim (``tests/service/test_client.py`` runs them).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = sorted((REPO / "docs").glob("*.md"))
PAGES = [README, *DOCS]

_FENCE = re.compile(r"^\s*(```|~~~)")
_INLINE_CODE = re.compile(r"`[^`]*`")
_LINK = re.compile(r"(?<!!)\[(?:[^\]\[]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def _prose_lines(text: str) -> Iterator[tuple[int, str]]:
    """(line number, line) outside fenced code blocks."""
    in_fence = False
    for number, line in enumerate(text.splitlines(), 1):
        if _FENCE.match(line):
            in_fence = not in_fence
            continue
        if not in_fence:
            yield number, line


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: link text kept, markup and punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = re.sub(r"<[^>]+>", "", text).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every anchor GitHub gives the headings of ``page`` (repeated headings get ``-1``, ``-2``, ...)."""
    seen: dict[str, int] = {}
    result = set()
    for _, line in _prose_lines(page.read_text()):
        match = _HEADING.match(line)
        if not match:
            continue
        base = _slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        result.add(base if count == 0 else f"{base}-{count}")
    return result


def links(page: Path) -> list[tuple[int, str]]:
    """(line, target) of every Markdown link in ``page``'s prose (not in code spans or code blocks)."""
    found = []
    for number, line in _prose_lines(page.read_text()):
        for match in _LINK.finditer(_INLINE_CODE.sub("", line)):
            found.append((number, match.group(1)))
    return found


def _relative_links() -> list[tuple[Path, int, str]]:
    return [
        (page, number, target)
        for page in PAGES
        for number, target in links(page)
        if not re.match(r"^[a-z][a-z0-9+.-]*:", target)
    ]  # http:, https:, mailto: are not checked here


def _id(param: tuple[Path, int, str]) -> str:
    page, number, target = param
    return f"{page.relative_to(REPO)}:{number}:{target}"


def test_the_pages_have_links() -> None:
    assert README.exists() and DOCS, "README.md and docs/*.md are what this module checks"
    assert len(_relative_links()) > 20


@pytest.mark.parametrize("link", _relative_links(), ids=_id)
def test_relative_link_resolves(link: tuple[Path, int, str]) -> None:
    page, number, target = link
    path_part, _, anchor = target.partition("#")
    target_file = (page.parent / unquote(path_part)).resolve() if path_part else page
    where = f"{page.relative_to(REPO)}:{number}: link {target!r}"
    try:
        relative = target_file.relative_to(REPO).as_posix()
    except ValueError:
        pytest.fail(f"{where} points outside the repository")
    if not target_file.exists():
        pytest.fail(f"{where}: {relative} does not exist")
    if anchor:
        assert target_file.suffix == ".md", f"{where}: anchors are only checked in Markdown files"
        known = anchors(target_file)
        assert anchor in known, (
            f"{where}: no heading of {relative} has the anchor #{anchor}; it has {sorted(known)}"
        )


def test_readme_is_at_most_200_lines() -> None:
    lines = README.read_text().splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines; move detail into docs/"


def test_readme_names_only_existing_paths() -> None:
    """Repository paths in the README's code spans (the method/stage table) exist."""
    roots = (
        "quant/",
        "solver/",
        "service/",
        "alembic/",
        "bench/",
        "examples/",
        "scripts/",
        "docker/",
        "tests/",
        "docs/",
        ".ci/",
    )
    missing = []
    for _, line in _prose_lines(README.read_text()):
        for span in _INLINE_CODE.findall(line):
            text = span.strip("`")
            if text.startswith(roots) and " " not in text and not (REPO / text).exists():
                missing.append(text)
    assert not missing, f"README.md names paths that do not exist: {missing}"


def test_readme_has_no_diary_traces() -> None:
    text = README.read_text()
    assert "/tmp" not in text, "README.md names a /tmp path"
    assert not re.search(r"(?<![\w/&])#\d+\b|\bissue \d+", text, re.IGNORECASE), (
        "README.md names issue numbers"
    )
    assert "was lent" not in text


def _code_blocks(page: Path, language: str) -> list[str]:
    blocks, current, in_block = [], [], False
    for line in page.read_text().splitlines():
        if _FENCE.match(line):
            if in_block:
                blocks.append("\n".join(current))
                current, in_block = [], False
            elif line.strip().strip("`~") == language:
                in_block = True
            continue
        if in_block:
            current.append(line)
    return blocks


def _command(blocks: list[str], starts: tuple[str, ...]) -> list[str]:
    """The first shell command in ``blocks`` that begins with one of ``starts``, as words (continuations joined)."""
    for block in blocks:
        text = block.replace("\\\n", " ")
        offset = 0
        for line in text.split("\n"):
            if line.lstrip().startswith(starts):
                return shlex.split(_logical_line(text[offset:]), comments=True)
            offset += len(line) + 1
    raise AssertionError(f"no command starting with {starts} in the README's bash blocks")


def _logical_line(text: str) -> str:
    """The text up to the first newline outside quotes (a quoted JSON body may span lines)."""
    quote = None
    for i, char in enumerate(text):
        if quote:
            if char == quote:
                quote = None
        elif char in "'\"":
            quote = char
        elif char == "\n":
            return text[:i]
    return text


@pytest.mark.slow
def test_readme_cli_example_runs(tmp_path: Path) -> None:
    words = _command(_code_blocks(README, "bash"), (".venv/bin/mpq quantize", "mpq quantize"))
    assert Path(words[0]).name == "mpq" and words[1] == "quantize", words
    args = words[2:]
    if "--output" in args:
        args[args.index("--output") + 1] = str(tmp_path / "out")
    command = [
        sys.executable,
        "-m",
        "quant.cli",
        "quantize",
        *args,
        "--num-calib",
        "32",
        "--range-search",
        "minmax",
        "--json",
    ]
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        command, check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, f"{shlex.join(command)} failed:\n{result.stderr[-3000:]}"
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["quantized"]["top1"] > 90.0, summary["quantized"]
    for name, usage in summary["budgets"].items():
        assert usage["used"] <= usage["limit"] + 1e-6, (name, usage)
    if "--output" in args:
        written = {p.name for p in (tmp_path / "out").iterdir()}
        assert {"model.safetensors", "quant_config.json", "report.json", "report.html"} <= written, written


@pytest.fixture
def api(tmp_path: Path):
    """An in-process app on a fresh SQLite database without a worker (jobs stay queued), and a tenant's key."""
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.auth.service import create_key
    from service.settings import Settings

    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'mpq.db'}",
        artifact_dir=tmp_path / "artifacts",
        embedded_worker=False,
        webhook_worker=False,
        data_root=None,
    )
    with TestClient(create_app(settings)) as client:
        with client.app.state.session_factory() as session:
            created = create_key(session, f"docs-{uuid.uuid4().hex[:8]}")
        yield client, created.key


def test_readme_api_example_is_accepted(api) -> None:
    from quant.config import STAGES

    client, key = api
    words = _command(_code_blocks(README, "bash"), ("curl",))
    method, url, headers, body = "GET", None, {}, None
    i = 1
    while i < len(words):
        word = words[i]
        if word in ("-X", "--request"):
            method, i = words[i + 1], i + 2
        elif word in ("-H", "--header"):
            name, _, value = words[i + 1].partition(":")
            headers[name.strip()] = value.strip().replace("$MPQ_API_KEY", key)
            i += 2
        elif word in ("-d", "--data", "--data-raw"):
            body, i = words[i + 1], i + 2
            method = method if method != "GET" else "POST"
        elif word.startswith("http"):
            url, i = word, i + 1
        else:
            i += 1
    assert url and body, words
    assert headers.get("Authorization") == f"Bearer {key}", (
        "the example must send the API key as a Bearer token"
    )
    json.loads(body)  # the body in the README is valid JSON
    path = urlparse(url).path
    response = client.request(method, path, headers=headers, content=body)
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["status"] == "queued", job
    assert [stage["name"] for stage in job["stages"]] == list(STAGES), job["stages"]
    status = client.get(f"{path}/{job['id']}", headers={"Authorization": f"Bearer {key}"})
    assert status.status_code == 200 and status.json()["id"] == job["id"]


@pytest.mark.parametrize("script", ["pipeline.py", "webhook_receiver.py"])
def test_service_page_shows_the_examples_verbatim(script: str) -> None:
    page = (REPO / "docs" / "service.md").read_text()
    source = (REPO / "examples" / script).read_text()
    assert source.strip() in page, f"docs/service.md's copy of examples/{script} differs from the file"
