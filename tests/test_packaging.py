"""The installed package is what users get (issue 2).

The source folders core/ and plugins/ are installed under the import names
chatcore and chatcore.plugins. tox installs the built wheel into each
environment and the README installs in editable mode; both must import as
chatcore only, never as top-level ``core`` or ``plugins``.

From the repository root the working directory is on ``sys.path``, so
``import core`` would find the raw folder and a ``chatcore.egg-info`` left in
the root by a build would shadow the installed metadata. The checks therefore
run in a fresh interpreter of this environment, started in an empty
directory: it sees exactly what a user of this environment sees.
"""

from __future__ import annotations

import configparser
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import pytest

import chatcore

ROOT = Path(__file__).resolve().parent.parent

_PROBE = r"""
import importlib.metadata, importlib.util, json, sys
import chatcore, chatcore.plugins.welcome

dist = importlib.metadata.distribution("chatcore")
spec = {name: importlib.util.find_spec(name) for name in ("core", "plugins")}
print(json.dumps({
    "chatcore": chatcore.__file__,
    "welcome": chatcore.plugins.welcome.__file__,
    "version": chatcore.__version__,
    "top_level_core_plugins": {name: s.origin if s else None for name, s in spec.items()},
    "files": [str(f) for f in dist.files or ()],
    "locate_init": str(dist.locate_file("chatcore/__init__.py")),
    "direct_url": dist.read_text("direct_url.json"),
    "dist_version": dist.version,
    "requires_python": dist.metadata["Requires-Python"],
    "classifiers": dist.metadata.get_all("Classifier") or [],
    "entry_points": {
        ep.name: [ep.value, ep.dist.name if ep.dist else None]
        for ep in importlib.metadata.entry_points(group="chatcore")
    },
}))
"""


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """What a fresh interpreter of this environment sees, outside the repository."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSAFEPATH")}
    result = subprocess.run(
        [sys.executable, "-I", "-c", _PROBE],
        cwd=tmp_path_factory.mktemp("elsewhere"),
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"importing the installed chatcore failed:\n{result.stderr}"
    probe: dict[str, Any] = json.loads(result.stdout)
    return probe


def _editable_source(probe: dict[str, Any]) -> Path | None:
    """The source folder of an editable install (PEP 610), else None."""
    if not probe["direct_url"]:
        return None
    direct_url = json.loads(probe["direct_url"])
    if not direct_url.get("dir_info", {}).get("editable"):
        return None
    return Path(unquote(urlparse(direct_url["url"]).path))


def test_no_top_level_core_or_plugins(installed: dict[str, Any]) -> None:
    assert installed["top_level_core_plugins"] == {"core": None, "plugins": None}


def test_distribution_installs_nothing_but_chatcore(installed: dict[str, Any]) -> None:
    top_level = {Path(f).parts[0] for f in installed["files"]} - {".."}  # ".." holds the console script
    top_level = {name for name in top_level if not name.endswith(".dist-info") and name != "__pycache__"}
    assert not top_level & {"core", "core.py", "plugins", "plugins.py"}
    if _editable_source(installed) is None:
        assert top_level == {"chatcore"}
    else:  # setuptools' editable hook: a .pth file and the finder module it loads
        assert all(name.startswith("__editable__") for name in top_level), top_level


def test_chatcore_comes_from_the_installation(installed: dict[str, Any]) -> None:
    source = _editable_source(installed)
    if source is None:
        init = Path(installed["locate_init"])
        assert Path(installed["chatcore"]) == init
        assert Path(installed["welcome"]) == init.parent / "plugins" / "welcome.py"
    else:
        assert Path(installed["chatcore"]) == source / "core" / "__init__.py"
        assert Path(installed["welcome"]) == source / "plugins" / "welcome.py"
    # The test suite itself exercises that same code, not a second copy.
    assert Path(chatcore.__file__).resolve() == Path(installed["chatcore"]).resolve()


def test_version_metadata_matches_the_package(installed: dict[str, Any]) -> None:
    assert installed["dist_version"] == installed["version"] == chatcore.__version__


def test_type_information_is_shipped() -> None:
    assert (Path(chatcore.__file__).parent / "py.typed").is_file()


def test_bundled_plugins_are_registered_entry_points(installed: dict[str, Any]) -> None:
    entry_points = installed["entry_points"]
    for name in ("commands", "welcome", "logger", "web"):
        assert entry_points.get(name) == [f"chatcore.plugins.{name}", "chatcore"], name


def test_supported_pythons_agree(installed: dict[str, Any]) -> None:
    """requires-python, the classifiers and the tox matrix name the same versions."""
    classified = sorted(
        (int(m.group(1)), int(m.group(2)))
        for c in installed["classifiers"]
        if (m := re.fullmatch(r"Programming Language :: Python :: (\d+)\.(\d+)", c))
    )
    floor = re.fullmatch(r">=(\d+)\.(\d+)", installed["requires_python"])
    assert floor, installed["requires_python"]
    assert classified[0] == (int(floor.group(1)), int(floor.group(2)))
    assert sys.version_info[:2] >= classified[0]

    config = configparser.ConfigParser(interpolation=None)
    config.read(ROOT / "tox.ini")
    labels = {
        name.strip(): [env.strip() for env in envs.split(",")]
        for name, envs in (line.split("=", 1) for line in config["tox"]["labels"].strip().splitlines())
    }
    matrix = labels["matrix"]
    assert matrix == [f"py{major}{minor}" for major, minor in classified]


@pytest.fixture(scope="module")
def wheel_names(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    """The names of the files in a wheel built from this source tree."""
    import shutil
    import zipfile

    # Built from a copy: setuptools leaves build/ beside the sources.
    tmp_path = tmp_path_factory.mktemp("wheel")
    source = tmp_path / "source"
    junk = (".git", ".venv", ".tox", ".ci-venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache")
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*junk))
    wheels = tmp_path / "wheels"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", wheels, source],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    (wheel,) = wheels.glob("chatcore-*.whl")
    return set(zipfile.ZipFile(wheel).namelist())


def test_the_wheel_ships_the_web_page_and_the_admin_page(wheel_names: set[str]) -> None:
    """The web plugin's and the api plugin's page files are package data:
    in the wheel, not only in the source tree."""
    for page_file in ("index.html", "app.js", "style.css"):
        assert f"chatcore/plugins/web_static/{page_file}" in wheel_names
    for page_file in ("index.html", "admin.js", "admin.css"):
        assert f"chatcore/plugins/admin_static/{page_file}" in wheel_names


@pytest.mark.parametrize(("folder", "package"), [("core", "chatcore"), ("plugins", "chatcore/plugins")])
def test_the_wheel_ships_every_module(wheel_names: set[str], folder: str, package: str) -> None:
    """Every module of the source tree is in the wheel: a package missing from
    pyproject.toml's list (the redis plugin's, say) works in an editable
    install and is absent from the wheel."""
    modules = {
        f"{package}/{path.relative_to(ROOT / folder).as_posix()}"
        for path in (ROOT / folder).rglob("*.py")
        if "__pycache__" not in path.parts
    }
    assert modules - wheel_names == set()
