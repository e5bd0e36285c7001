"""pyproject.toml as pip reads it: the dependencies, what a wheel ships, how make installs it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

from .conftest import ROOT


def requirement_lines(name: str) -> list[str]:
    """The requirements a requirements file names itself (no comments, no `-r` includes)."""
    lines = [line.split("#")[0].strip() for line in (ROOT / name).read_text().splitlines()]
    return [line for line in lines if line and not line.startswith("-")]


def test_the_local_extra_is_requirements_local_txt() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["optional-dependencies"]["local"] == requirement_lines("requirements-local.txt")


def test_the_wheel_has_the_dependencies_the_command_and_the_fonts(tmp_path: Path) -> None:
    # Built from a copy: setuptools writes build/ and an egg-info next to the sources.
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "requirements.txt", "requirements-local.txt"):
        shutil.copy(ROOT / name, source)
    shutil.copytree(
        ROOT / "ragchat", source / "ragchat", ignore=shutil.ignore_patterns("__pycache__")
    )
    pip_wheel = (
        "-m pip wheel --no-deps --no-build-isolation --check-build-dependencies --no-cache-dir"
    )
    subprocess.run(
        [sys.executable, *pip_wheel.split(), "-w", str(tmp_path), str(source)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    [wheel] = tmp_path.glob("ragchat-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        metadata = archive.read(next(n for n in names if n.endswith(".dist-info/METADATA")))
        entry_points = archive.read(next(n for n in names if n.endswith("/entry_points.txt")))

    assert {
        "ragchat/__main__.py",
        "ragchat/users_cli.py",
        "ragchat/backends/__init__.py",
        "ragchat/fonts/DejaVuSans.ttf",
        "ragchat/fonts/LICENSE",
    } <= names
    assert [name for name in names if not name.startswith(("ragchat/", "ragchat-"))] == []
    requires = [
        line.removeprefix("Requires-Dist: ")
        for line in metadata.decode().splitlines()
        if line.startswith("Requires-Dist: ")
    ]
    assert requires == requirement_lines("requirements.txt") + [
        f'{line}; extra == "local"' for line in requirement_lines("requirements-local.txt")
    ]
    assert "ragchat = ragchat.__main__:cli" in entry_points.decode()


def test_make_installs_the_project_again_when_pyproject_toml_changes() -> None:
    # Under `make test` this is a sub-make: MAKEFLAGS and MAKELEVEL would change what it prints.
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    planned = subprocess.run(
        ["make", "--dry-run", "--no-print-directory", "--what-if=pyproject.toml"]
        + [".venv/.installed"],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.splitlines()
    assert planned[-2:] == [
        ".venv/bin/pip install --no-deps --no-build-isolation --check-build-dependencies -e .",
        "touch .venv/.installed",
    ]
