"""The hashed lock files (requirements/): they agree with pyproject.toml, cover every import, and
are what the environment running these tests was installed from (CI installs a fresh venv with
``make install``, through the lock). See requirements/README.md.
"""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from functools import cache
from importlib.metadata import PackageNotFoundError, packages_distributions, version
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
DEV_LOCK = ROOT / "requirements" / "dev.txt"
RUNTIME_LOCK = ROOT / "requirements" / "runtime.txt"
LOCKED_EXTRAS = ("dev", "loadtest")  # fp8 (torchao, CUDA only): installed on top, unlocked
FIRST_PARTY = {"core", "service", "pipelines", "weights", "benchmarks", "tests"}
RUNTIME_CODE = ("core", "service", "pipelines", "weights")
LOADTEST_CODE = ("service/loadtest",)  # the loadtest extra: a client, on fal-client's httpx
DEV_CODE = ("benchmarks", "tests")
DEV_TOOLS = ("pytest", "ruff", "mypy", "fal-client", "playwright", "httpx", "uv")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass(frozen=True)
class Locked:
    version: str
    marker: str | None
    hashes: tuple[str, ...]


@cache
def read_lock(path: Path) -> dict[str, Locked]:
    """``name -> Locked`` from a pip requirements file with hashes (continuation lines joined)."""
    entries: dict[str, Locked] = {}
    logical = re.sub(r"\\\n\s*", " ", path.read_text())
    for line in logical.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        spec, *hashes = line.split(" --hash=")
        requirement = Requirement(spec.strip())
        [specifier] = list(requirement.specifier)
        assert specifier.operator == "==", f"{path.name}: {spec} is not an exact pin"
        name = canonical(requirement.name)
        assert name not in entries, f"{path.name}: {name} twice"
        entries[name] = Locked(
            specifier.version,
            str(requirement.marker) if requirement.marker else None,
            tuple(h.strip() for h in hashes),
        )
    return entries


def pins(requirements: list[str]) -> dict[str, str]:
    result = {}
    for text in requirements:
        requirement = Requirement(text)
        if canonical(requirement.name) == "flux2-edit":  # an extra naming another: its pins count
            continue
        [specifier] = list(requirement.specifier)
        assert specifier.operator == "==", f"pyproject.toml: {text} is not pinned with =="
        result[canonical(requirement.name)] = specifier.version
    return result


RUNTIME_PINS = pins(PYPROJECT["project"]["dependencies"])
BUILD_PINS = pins(PYPROJECT["build-system"]["requires"])
LOADTEST_PINS = pins(PYPROJECT["project"]["optional-dependencies"]["loadtest"])
DEV_PINS = {
    name: pin
    for extra in LOCKED_EXTRAS
    for name, pin in pins(PYPROJECT["project"]["optional-dependencies"][extra]).items()
}


# -- pyproject and the locks agree -------------------------------------------------------------


def test_every_direct_dependency_is_pinned_exactly() -> None:
    for extra, requirements in PYPROJECT["project"]["optional-dependencies"].items():
        assert pins(requirements), extra
    assert RUNTIME_PINS
    assert set(BUILD_PINS) == {"setuptools"}


@pytest.mark.parametrize(
    ("lock", "expected"),
    [
        (DEV_LOCK, {**RUNTIME_PINS, **BUILD_PINS, **DEV_PINS}),
        (RUNTIME_LOCK, {**RUNTIME_PINS, **BUILD_PINS}),
    ],
    ids=["dev", "runtime"],
)
def test_every_pin_of_pyproject_is_in_the_lock_unchanged(
    lock: Path, expected: dict[str, str]
) -> None:
    locked = read_lock(lock)
    wrong = {
        name: (pin, locked[name].version if name in locked else None)
        for name, pin in expected.items()
        if name not in locked or locked[name].version != pin
    }
    assert not wrong, f"pyproject.toml and {lock.name} disagree ({{name: (pin, lock)}}): {wrong}"


def test_the_runtime_lock_is_the_dev_lock_without_the_dev_tools() -> None:
    dev, runtime = read_lock(DEV_LOCK), read_lock(RUNTIME_LOCK)
    assert set(runtime) <= set(dev)
    assert {name for name in runtime if runtime[name].version != dev[name].version} == set()
    assert [tool for tool in DEV_TOOLS if tool in runtime] == []


def test_one_http_stack_at_run_time() -> None:
    runtime = read_lock(RUNTIME_LOCK)
    assert "httpx2" in runtime
    assert "httpx" not in runtime
    assert "httpcore" not in runtime


@pytest.mark.parametrize("lock", [DEV_LOCK, RUNTIME_LOCK], ids=["dev", "runtime"])
def test_every_locked_package_is_hashed(lock: Path) -> None:
    for name, entry in read_lock(lock).items():
        assert entry.hashes, f"{lock.name}: {name} has no hash"
        for value in entry.hashes:
            assert re.fullmatch(r"sha256:[0-9a-f]{64}", value), (name, value)


# -- what the code imports is declared ---------------------------------------------------------


def imported_modules(
    folders: tuple[str, ...], *, skip: tuple[str, ...] = ()
) -> dict[str, set[str]]:
    """Third-party top-level modules imported anywhere under ``folders`` (but ``skip``), with
    a file each."""
    local = {path.stem for path in (ROOT / "tests").rglob("*.py")}
    found: dict[str, set[str]] = {}
    for folder in folders:
        for path in (ROOT / folder).rglob("*.py"):
            if any(path.is_relative_to(ROOT / other) for other in skip):
                continue
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top in sys.stdlib_module_names or top in FIRST_PARTY | local:
                        continue
                    if top == "__future__":
                        continue
                    found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


@pytest.mark.parametrize(
    ("folders", "skip", "declared"),
    [
        (RUNTIME_CODE, LOADTEST_CODE, set(RUNTIME_PINS)),
        (LOADTEST_CODE, (), set(RUNTIME_PINS) | set(LOADTEST_PINS)),
        (DEV_CODE, (), set(RUNTIME_PINS) | set(DEV_PINS)),
    ],
    ids=["runtime-code", "loadtest-extra", "tests-and-benchmarks"],
)
def test_every_imported_third_party_module_is_declared(
    folders: tuple[str, ...], skip: tuple[str, ...], declared: set[str]
) -> None:
    """A module imported directly must be a direct dependency of its own (not arrive through
    another package's requirements), and run-time code may only use run-time dependencies."""
    owners = packages_distributions()
    undeclared = {}
    for module, files in sorted(imported_modules(folders, skip=skip).items()):
        distributions = {canonical(d) for d in owners.get(module, [])}
        if not distributions & declared:
            undeclared[module] = (sorted(distributions), sorted(files)[:3])
    assert not undeclared, f"imported but not declared in pyproject.toml: {undeclared}"


def test_the_import_scan_sees_what_it_should() -> None:
    """Guards the scan itself: an empty result would make the test above pass vacuously."""
    runtime = imported_modules(RUNTIME_CODE, skip=LOADTEST_CODE)
    assert {"httpx2", "httpcore2", "starlette", "torch", "PIL"} <= set(runtime)
    assert "httpx" not in runtime  # the run-time code is on one HTTP stack
    assert {"pytest", "httpx", "yaml"} <= set(imported_modules(DEV_CODE))


# -- the environment was installed from the lock -----------------------------------------------


def test_this_environment_was_installed_from_the_lock() -> None:
    """CI runs ``make install`` in a fresh venv: if it did not install through the lock, or the
    lock does not install, this fails. Locally it means: run ``make install``."""
    wrong = {}
    for name, entry in read_lock(DEV_LOCK).items():
        if entry.marker is not None and not Marker(entry.marker).evaluate():
            continue
        try:
            installed = version(name)
        except PackageNotFoundError:
            installed = None
        if installed != entry.version:
            wrong[name] = (entry.version, installed)
    assert not wrong, (
        f"installed versions differ from requirements/dev.txt (lock, installed): {wrong}"
    )


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_install_installs_the_lock_and_nothing_else() -> None:
    recipe = subprocess.run(
        ["make", "-n", "-B", "-C", str(ROOT), "install", "VENV=/nonexistent/venv"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    installs = [
        line for line in recipe.splitlines() if " install " in f" {line} " and "pip" in line
    ]
    assert len(installs) == 2, recipe
    assert all("--no-deps" in line.split() for line in installs), recipe
    locked, project = installs
    assert "--require-hashes" in locked.split()
    assert "-r requirements/dev.txt" in locked
    assert "--no-build-isolation" in project.split()
    assert project.split()[-2:] == ["-e", "."]
