"""What a device user gets from `pip install 'edgeops[agent]'`: a fresh venv with this
checkout installed as a package (not editable), and nothing else.

The checkout is copied first, so building the wheel leaves no build/ in the working tree.
Wheels of the agent's dependencies can be kept in a wheelhouse keyed by pyproject.toml's
hash, so a test session installs from disk with `--no-index` (a real resolve and install,
without the network) and only the first session downloads.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tomllib
import venv
from collections.abc import Sequence
from pathlib import Path

from tests.cli_support import REPO_ROOT

__all__ = [
    "agent_wheelhouse",
    "copy_checkout",
    "create_venv",
    "pip_install",
    "site_packages",
    "tree_bytes",
    "venv_python",
]

# What setuptools needs to build the wheel (pyproject.toml and the package-data globs).
CHECKOUT_PARTS = ("pyproject.toml", "README.md", "edgeops", "agent", "server", "simulations")
CACHE_ROOT = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "edgeops-tests"
PIP_TIMEOUT_S = 900


def copy_checkout(dest: Path) -> Path:
    """The files a build of this checkout reads, copied to `dest`."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    dest.mkdir(parents=True, exist_ok=True)
    for part in CHECKOUT_PARTS:
        source = REPO_ROOT / part
        if source.is_dir():
            shutil.copytree(source, dest / part, ignore=ignore)
        else:
            shutil.copy2(source, dest / part)
    return dest


def create_venv(path: Path, *, with_pip: bool = False) -> Path:
    """A fresh venv; returns its python. Without pip of its own (the default) it is filled
    by the running interpreter's pip (`pip --python`), which saves ensurepip's run."""
    venv.EnvBuilder(with_pip=with_pip, clear=True).create(path)
    return venv_python(path)


def venv_python(path: Path) -> Path:
    return path / "bin" / "python"


def site_packages(path: Path) -> Path:
    return (
        path / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    )


def tree_bytes(root: Path) -> int:
    """Bytes of the regular files below `root` (symlinks not followed)."""
    return sum(p.lstat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink())


def pip_install(python: Path, args: Sequence[str]) -> None:
    """`pip install ARGS` into the venv of `python`; RuntimeError with pip's output if it
    fails."""
    done = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", *args],
        capture_output=True,
        text=True,
        timeout=PIP_TIMEOUT_S,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"pip install {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")


def _build_requires() -> list[str]:
    """The build backend pyproject.toml names: `--no-index` builds need its wheels too."""
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    return [*project["build-system"]["requires"], "wheel"]


def agent_wheelhouse(work: Path) -> Path:
    """A folder holding wheels for `edgeops[agent]`'s dependencies and the build backend,
    made once per pyproject.toml (under ~/.cache/edgeops-tests) and reused afterwards."""
    digest = hashlib.sha256((REPO_ROOT / "pyproject.toml").read_bytes()).hexdigest()[:16]
    house = CACHE_ROOT / f"agent-wheels-{digest}"
    CACHE_ROOT.mkdir(parents=True, exist_ok=True)
    with open(CACHE_ROOT / f"agent-wheels-{digest}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one builder at a time; the others then reuse it
        if not (house / ".complete").exists():
            shutil.rmtree(house, ignore_errors=True)
            source = copy_checkout(work / "wheelhouse-source")
            run = [sys.executable, "-m", "pip"]
            for command in (
                [*run, "wheel", "--quiet", "--wheel-dir", str(house), f"{source}[agent]"],
                [*run, "download", "--quiet", "--dest", str(house), *_build_requires()],
            ):
                done = subprocess.run(
                    command, capture_output=True, text=True, timeout=PIP_TIMEOUT_S, check=False
                )
                if done.returncode != 0:
                    raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr}")
            for stale in house.glob("edgeops-*.whl"):  # each session builds the checkout anew
                stale.unlink()
            (house / ".complete").touch()
    return house
