"""Where a package came from: the code version, with the git commit when there is one."""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

import edgeops

logger = logging.getLogger(__name__)

_GIT_TIMEOUT_S = 5.0


def code_version() -> str:
    """`edgeops.__version__`, plus `+g<commit>` (and `.dirty`) when run from a git checkout.

    The commit is only trusted when the edgeops sources are tracked by that checkout, so an
    installed copy that happens to sit inside some other repository reports the bare version.
    """
    package_dir = Path(edgeops.__file__).resolve().parent
    commit = _git(package_dir, "rev-parse", "HEAD")
    tracked = _git(package_dir, "ls-files", "--error-unmatch", "__init__.py")
    if not commit or tracked is None:
        return edgeops.__version__
    dirty = _git(package_dir, "status", "--porcelain", "--untracked-files=no", ":/")
    suffix = ".dirty" if dirty else ""
    return f"{edgeops.__version__}+g{commit[:12]}{suffix}"


def _git(cwd: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", *args],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=_GIT_TIMEOUT_S,
            check=True,
        )
    except (OSError, subprocess.SubprocessError) as err:
        logger.debug("git %s failed in %s: %s", " ".join(args), cwd, err)
        return None
    return done.stdout.strip()
