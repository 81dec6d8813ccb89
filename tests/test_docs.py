"""The docs cannot drift: docs/commands.md matches the parser, and every relative link resolves."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from asyncbackup.cli import environment
from asyncbackup.cli.arguments import build_parser
from asyncbackup.cli.reference import BEGIN, END, reference, render

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = ROOT / "docs" / "commands.md"
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_FENCE = re.compile(r"^(```|~~~)")


def test_commands_md_is_generated_from_the_parser() -> None:
    text = COMMANDS.read_text(encoding="utf-8")
    assert BEGIN in text and END in text, "docs/commands.md lost its markers: run make docs"
    assert render(text, reference()) == text, (
        "docs/commands.md does not match the parser in asyncbackup/cli/arguments.py: run make docs"
    )


def test_every_option_and_variable_of_every_command_is_in_commands_md() -> None:
    text = COMMANDS.read_text(encoding="utf-8")
    for command in environment.command_parsers(build_parser()):
        for action in command._actions:
            if isinstance(action, argparse._HelpAction | argparse._VersionAction):
                continue
            for flag in action.option_strings:
                assert f"`{flag}" in text or f", {flag}" in text, f"{flag}: run make docs"
            name = environment.variable(action, command)
            if name is not None:
                assert f"`{name}`" in text, f"{name}: run make docs"


def test_a_changed_parser_is_caught_as_drift() -> None:
    parser = build_parser()
    text = render(COMMANDS.read_text(encoding="utf-8"), reference(parser))
    for command in environment.command_parsers(parser):
        if command.prog.endswith(" list"):
            command.add_argument("--brand-new", help="an option someone just added")
    assert render(text, reference(parser)) != text
    assert "`--brand-new BRAND_NEW`" in reference(parser)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link: its text
    text = text.replace("`", "").strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every anchor the headings of ``page`` make (a repeated heading gets -1, -2...)."""
    seen: dict[str, int] = {}
    found: set[str] = set()
    in_code = False
    for line in page.read_text(encoding="utf-8").splitlines():
        if _FENCE.match(line):
            in_code = not in_code
        elif not in_code and (match := re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)):
            base = slug(match.group(1))
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(page: Path) -> list[str]:
    """The link targets of ``page`` outside code blocks."""
    targets: list[str] = []
    in_code = False
    for line in page.read_text(encoding="utf-8").splitlines():
        if _FENCE.match(line):
            in_code = not in_code
        elif not in_code:
            targets += _LINK.findall(re.sub(r"`[^`]*`", "", line))
    return targets


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_resolves_to_a_file_and_anchor(page: Path) -> None:
    broken: list[str] = []
    for target in links(page):
        parts = urlsplit(target)
        if parts.scheme or target.startswith("//"):
            continue  # an absolute URL: not ours to check offline
        path = (page.parent / unquote(parts.path)).resolve() if parts.path else page
        if not path.exists():
            broken.append(f"{target}: no file {path.relative_to(ROOT)}")
        elif parts.fragment and path.suffix == ".md" and parts.fragment not in anchors(path):
            broken.append(f"{target}: no heading makes #{parts.fragment} in {path.name}")
    assert not broken, f"broken links in {page.relative_to(ROOT)}: " + "; ".join(broken)


def test_the_link_checker_sees_a_broken_file_and_a_broken_anchor(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("# Top `x`\n\n## Exit codes\n\n```\n[not](a-link.md)\n```\n")
    assert anchors(page) == {"top-x", "exit-codes"}
    assert links(page) == []
    page.write_text("# Top\n[a](missing.md) [b](#exit-codes) [c](https://example.com)\n")
    assert links(page) == ["missing.md", "#exit-codes", "https://example.com"]


def test_the_readme_is_a_front_door() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 260
    for must in ("make run", "make test", "pip install .", "pipx install ."):
        assert must in readme, must
