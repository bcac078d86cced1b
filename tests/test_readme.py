"""Every train.py, eval.py and predict.py command in the README composes, exactly as it is written there."""

from __future__ import annotations

import re
import shlex

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser

from conftest import ROOT

SCRIPTS = {"train.py": "train", "eval.py": "eval", "predict.py": "predict"}


def readme_commands() -> list[str]:
    """The README's commands of the three entry points, continuation lines joined."""
    text = (ROOT / "README.md").read_text().replace("\\\n", " ")
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    lines = [line.split("#")[0].strip() for block in blocks for line in block.splitlines()]
    return [line for line in lines if re.match(r"(\.venv/bin/)?python (train|eval|predict)\.py", line)]


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
    commands = readme_commands()
    assert len(commands) >= 10
    assert {command.split()[1] for command in commands} == set(SCRIPTS)


@pytest.mark.parametrize("command", readme_commands())
def test_a_readme_command_composes_as_written(command):
    command = re.sub(r"(^|\s)<[^>]*>", " ", command)  # placeholders that stand alone, e.g. <the run's overrides>
    words = shlex.split(re.sub(r"<[^>]*>", "x", command))  # and placeholders in values, e.g. <run>/checkpoints
    script, arguments = words[1], [w for w in words[2:] if w != "-m"]
    assert not [a for a in arguments if a.startswith("+")], "a key the README uses needs no +"
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(SCRIPTS[script], overrides=first_of_each_sweep(arguments), return_hydra_config=True)
    for argument in first_of_each_sweep(arguments):
        key = argument.split("=", 1)[0]
        assert key in cfg.hydra.runtime.choices or key.split(".")[0] in cfg, argument  # a group, or a key
