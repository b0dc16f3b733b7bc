"""The pins of pyproject.toml and environment.yml must agree, and torch must be pinned exactly."""

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def pyproject_pins() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        requirements += extra
    pins = {}
    for requirement in requirements:
        name, _, version = requirement.partition("==")
        assert version, f"{requirement!r} in pyproject.toml is not pinned exactly"
        pins[name.strip().lower()] = version.strip()
    return pins


def environment_pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "environment.yml").read_text().splitlines():
        match = re.match(r"\s*-\s*([A-Za-z0-9_.\-]+)\s*==\s*([^\s#]+)", line)
        if match:
            pins[match.group(1).lower()] = match.group(2)
    return pins


def test_environment_mirrors_pyproject():
    assert environment_pins() == pyproject_pins()


def test_torch_is_pinned_exactly():
    assert re.fullmatch(r"\d+\.\d+\.\d+", pyproject_pins()["torch"])


def test_python_version_agrees():
    text = (ROOT / "environment.yml").read_text()
    assert re.search(r"-\s*python=3\.11\b", text)
