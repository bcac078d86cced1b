"""The README and the pages of docs/: every train.py, eval.py and predict.py command composes, exactly as it is
written there; every relative link leads to a file, and so does every file of the project a page names; the README
stays short."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser

from helpers import ROOT

SCRIPTS = {"train.py": "train", "eval.py": "eval", "predict.py": "predict"}
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
PLUGIN_PAGES = sorted((ROOT / "plugins").glob("*/README.md"))
# a file of the project as a page names it, from the project's root: `src/...`, `plugins/.../tests/test_x.py`
PROJECT_PATH = re.compile(r"`((?:src|plugins|conf|tests|benchmarks|docs|notebooks)/[\w./-]*)`")
README_MAX_LINES = 250


def commands(page: Path) -> list[str]:
    """A page's commands of the three entry points in its bash blocks, continuation lines joined."""
    text = page.read_text().replace("\\\n", " ")
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    lines = [line.split("#")[0].strip() for block in blocks for line in block.splitlines()]
    return [line for line in lines if re.match(r"(\.venv/bin/)?python (train|eval|predict)\.py", line)]


def links(page: Path) -> list[str]:
    """A page's relative link targets, ``](path)`` or ``](path#anchor)``, outside code blocks and code spans."""
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    text = re.sub(r"`[^`\n]*`", "", text)
    targets = re.findall(r"\]\(([^)\s]+)\)", text)
    return [t for t in targets if not re.match(r"[a-z][a-z0-9+.-]*:", t)]  # not http:, https:, mailto:


def first_of_each_sweep(arguments: list[str]) -> list[str]:
    """The overrides of the first job of a sweep: ``optim.lr=0.03,0.1`` gives ``optim.lr=0.03``, and an Optuna
    search space ``optim.lr=tag(log,interval(1e-4,1.0))`` its lower end."""
    parsed = OverridesParser.create().parse_overrides(arguments)
    return [
        o.input_line
        if not o.is_sweep_override()
        else f"{o.get_key_element()}={o.value().start}"
        if o.is_interval_sweep()
        else f"{o.get_key_element()}={next(o.sweep_string_iterator())}"
        for o in parsed
    ]


def test_the_readme_has_commands_of_every_entry_point():
    readme = commands(README)
    assert len(readme) >= 10
    assert {command.split()[1] for command in readme} == set(SCRIPTS)


def test_the_readme_is_short():
    assert len(README.read_text().splitlines()) <= README_MAX_LINES


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.relative_to(ROOT).as_posix())
def test_a_page_has_no_html_comments(page: Path):
    assert "<!--" not in page.read_text()


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.relative_to(ROOT).as_posix())
def test_every_relative_link_of_a_page_resolves(page: Path):
    missing = [t for t in links(page) if not (page.parent / t.split("#")[0]).exists()]
    assert not missing, f"{page.relative_to(ROOT)} links to missing files: {missing}"


@pytest.mark.parametrize("page", [*PAGES, *PLUGIN_PAGES], ids=lambda page: page.relative_to(ROOT).as_posix())
def test_every_project_file_a_page_names_exists(page: Path):
    named = [path for path in PROJECT_PATH.findall(page.read_text()) if "..." not in path]  # `a/.../b.py` abridges
    missing = [path for path in named if not (ROOT / path).exists()]
    assert not missing, f"{page.relative_to(ROOT)} names files the project does not have: {missing}"


@pytest.mark.parametrize("command", sorted({c for page in PAGES for c in commands(page)}))
def test_a_command_composes_as_written(command: str):
    command = re.sub(r"(^|\s)<[^>]*>", " ", command)  # placeholders that stand alone, e.g. <the run's overrides>
    words = shlex.split(re.sub(r"<[^>]*>", "x", command))  # and placeholders in values, e.g. <run>/checkpoints
    flags = re.sub(r"(--cfg|-c) \w+|(^|\s)-m(?=\s|$)", " ", shlex.join(words[2:]))  # Hydra's flags, not overrides
    script, arguments = words[1], shlex.split(flags)
    assert not [a for a in arguments if a.startswith("+")], "a key the docs use needs no +"
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(SCRIPTS[script], overrides=first_of_each_sweep(arguments), return_hydra_config=True)
    for argument in first_of_each_sweep(arguments):
        key = argument.split("=", 1)[0]
        assert key in cfg.hydra.runtime.choices or key.split(".")[0] in cfg, argument  # a group, or a key
