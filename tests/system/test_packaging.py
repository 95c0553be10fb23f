"""What ``pip install`` gives: one version, honest floors, a wheel that runs the config.

``.ci/run`` runs the suite twice: in an editable install, then in a non-editable one
with the lowest versions pyproject.toml allows (``.ci/lowest.txt``). The wheel's
tests here skip in the first and do their work in the second.
"""

from __future__ import annotations

import os
import tomllib
from importlib.metadata import distribution, version
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

import mm7tx

ROOT = Path(__file__).resolve().parents[2]


def test_version_is_the_installed_distributions():
    assert mm7tx.__version__ == version("mm7tx")


def floors() -> dict[str, Version]:
    """Every ``name>=X`` of the dependencies and the test extra, as name -> X."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    result = {}
    for line in [*project["dependencies"], *project["optional-dependencies"]["test"]]:
        requirement = Requirement(line)
        for spec in requirement.specifier:
            if spec.operator == ">=":
                result[requirement.name.lower()] = Version(spec.version)
    return result


def lowest_pins() -> dict[str, Version]:
    result = {}
    for line in (ROOT / ".ci" / "lowest.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, pinned = line.partition("==")
            result[name.strip().lower()] = Version(pinned)
    return result


def test_the_lowest_constraints_pin_exactly_the_floors():
    """A floor that .ci/run does not install is a floor nobody has seen work."""
    pins = lowest_pins()
    declared = floors()
    # lxml-stubs only feeds mypy, which the lowest run does not run.
    del declared["lxml-stubs"]
    assert pins == declared


def test_the_installed_distribution_runs_under_its_floors():
    """In the lowest venv, what is installed is what .ci/lowest.txt pinned."""
    if not os.environ.get("MM7TX_LOWEST"):
        pytest.skip("not .ci/run's lowest venv (MM7TX_LOWEST=1)")
    for name, pinned in lowest_pins().items():
        assert Version(version(name)) == pinned, name


def wheel_files() -> set[str]:
    files = distribution("mm7tx").files or []
    names = {file.as_posix() for file in files}
    if not any(name.startswith("mm7tx/") for name in names):
        pytest.skip("an editable install: .ci/run's second venv installs the wheel")
    return names


def test_the_wheel_ships_the_plugin_the_examples_and_the_type_marker():
    names = wheel_files()
    for shipped in (
        "twisted/plugins/mm7tx_plugin.py",
        "mm7tx/py.typed",
        "mm7tx/examples/shortcode.py",
    ):
        assert shipped in names
    assert not [name for name in names if name.startswith("tests/")]
    # Twisted's own twisted/plugins/__init__.py stays Twisted's.
    assert "twisted/plugins/__init__.py" not in names
