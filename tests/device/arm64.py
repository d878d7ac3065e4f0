"""The emulated arm64 device: a Debian arm64 root (devices/arm64/build-root.sh) entered with
`chroot` under qemu-user-static, with the agent installed in it as a user installs it.

    Arm64Root.ensure()           the cached root, built first if the recipe changed
    root.install_agent(work)     this checkout as a wheel, `pip install 'edgeops-*.whl[agent]'`
                                 into a venv of the root's own python3 (aarch64 wheels from the
                                 package index); skipped when the checkout is unchanged
    root.command(argv, env)      the argv that runs `argv` inside the root
    root.host_path(path)         where a path inside the root is on the host
    root.in_use()                one user at a time: the agent venv and device folder are shared

Each command runs in a mount namespace of its own (`unshare --mount`) where /proc and /dev
are mounted into the root, so nothing stays mounted on the host after it exits, however it
ends. qemu-user shares the host's network, so the agent reaches the server and the broker on
127.0.0.1.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.agent_install import CHECKOUT_PARTS, copy_checkout
from tests.cli_support import REPO_ROOT

__all__ = ["AGENT_VENV", "Arm64Root", "host_problem"]

BUILD_SCRIPT = REPO_ROOT / "devices" / "arm64" / "build-root.sh"
AGENT_VENV = "/opt/edgeops-agent"
WHEEL_DIR = "/opt/edgeops-wheels"
EDGEOPS = f"{AGENT_VENV}/bin/edgeops"
BINFMT_ENTRY = Path("/proc/sys/fs/binfmt_misc/qemu-aarch64")
ROOT_BUILD_TIMEOUT_S = 3600
PIP_TIMEOUT_S = 1800
# pip in the root trusts what the host trusts (a TLS-inspecting egress proxy's CA, say): the
# host's bundle is copied in, which is quicker than update-ca-certificates run emulated.
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
ROOT_CA_BUNDLE = "/etc/ssl/certs/edgeops-host-ca-bundle.crt"
BASE_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
    "HOME": "/root",
    "LANG": "C.UTF-8",
    "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    "PIP_DEFAULT_TIMEOUT": "180",
}
# Runs as `sh -c SCRIPT sh ROOT ARGV...` inside the new mount namespace.
_ENTER = 'r="$1"; shift; mount -t proc proc "$r/proc" && mount --rbind /dev "$r/dev" && exec chroot "$r" "$@"'


def host_problem() -> str | None:
    """Why this host cannot run the device, or None. `make device-arm64` fixes each one."""
    if os.geteuid() != 0:
        return "the arm64 device needs root (debootstrap, chroot and mount namespaces)"
    for tool in ("debootstrap", "unshare", "chroot"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (make device-arm64 installs debootstrap and qemu-user-static)"
    if not BINFMT_ENTRY.exists():
        return (
            "the qemu-aarch64 binfmt handler is not enabled: apt-get install qemu-user-static; "
            "mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc; "
            "update-binfmts --enable qemu-aarch64 (make device-arm64 does this)"
        )
    return None


@dataclass(frozen=True)
class Arm64Root:
    path: Path
    built_s: float  # 0.0 when the cached root was reused

    @classmethod
    def ensure(cls) -> Arm64Root:
        """The cached root for the current recipe; built now (minutes) if there is none."""
        problem = host_problem()
        if problem is not None:
            raise RuntimeError(problem)
        started = time.monotonic()
        done = subprocess.run(
            ["bash", str(BUILD_SCRIPT)], capture_output=True, text=True,
            timeout=ROOT_BUILD_TIMEOUT_S, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"{BUILD_SCRIPT} failed ({done.returncode}):\n{done.stderr[-4000:]}")
        built_s = time.monotonic() - started if "build-root.sh: built " in done.stderr else 0.0
        return cls(Path(done.stdout.strip().splitlines()[-1]), built_s)

    @contextmanager
    def in_use(self) -> Iterator[None]:
        """Wait until no other run (a test, the benchmark) is using this root, then hold it."""
        with open(self.path.parent / f"{self.path.name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def host_path(self, path: str) -> Path:
        return self.path / path.lstrip("/")

    def command(self, argv: Sequence[str], env: Mapping[str, str] | None = None) -> list[str]:
        """The host argv running `argv` in the root with only BASE_ENV and `env` set."""
        environment = [f"{k}={v}" for k, v in {**BASE_ENV, **(env or {})}.items()]
        return [
            "unshare", "--mount", "--propagation", "private", "--kill-child",
            "sh", "-c", _ENTER, "sh", str(self.path), "/usr/bin/env", "-i", *environment, *argv,
        ]  # fmt: skip

    def run(
        self, argv: Sequence[str], env: Mapping[str, str] | None = None, timeout_s: float = 600
    ) -> str:
        """Run `argv` in the root; its stdout, or RuntimeError with its output."""
        done = subprocess.run(
            self.command(argv, env), capture_output=True, text=True, timeout=timeout_s, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"in the arm64 root, {' '.join(argv)} exited {done.returncode}:\n"
                f"{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
            )
        return done.stdout

    def install_agent(self, work: Path) -> float:
        """Install this checkout's agent in the root's venv; seconds taken (0.0: unchanged)."""
        digest = checkout_digest()
        stamp = self.host_path(f"{AGENT_VENV}/.edgeops-checkout")
        if stamp.exists() and stamp.read_text() == digest:
            return 0.0
        started = time.monotonic()
        wheel = self._build_wheel(work)
        self._use_host_network_settings()
        if not self.host_path(f"{AGENT_VENV}/bin/python").exists():
            self.run(["python3", "-m", "venv", AGENT_VENV])
        pip, env = [f"{AGENT_VENV}/bin/pip"], {"PIP_CERT": ROOT_CA_BUNDLE}
        # The version number does not change between checkouts: drop the old one first.
        self.run([*pip, "uninstall", "--quiet", "--yes", "edgeops"], env, PIP_TIMEOUT_S)
        self.run([*pip, "install", "--quiet", f"{WHEEL_DIR}/{wheel}[agent]"], env, PIP_TIMEOUT_S)
        stamp.write_text(digest)
        return time.monotonic() - started

    def _build_wheel(self, work: Path) -> str:
        source = copy_checkout(work / "wheel-source")
        out = self.host_path(WHEEL_DIR)
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        done = subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(out),
             str(source)],
            capture_output=True, text=True, timeout=PIP_TIMEOUT_S, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"pip wheel of the checkout failed:\n{done.stderr[-4000:]}")
        (wheel,) = out.glob("edgeops-*.whl")
        return wheel.name

    def _use_host_network_settings(self) -> None:
        shutil.copy2(HOST_CA_BUNDLE, self.host_path(ROOT_CA_BUNDLE))
        shutil.copy2("/etc/resolv.conf", self.host_path("/etc/resolv.conf"))


def checkout_digest() -> str:
    """A hash of the files the wheel is built from."""
    digest = hashlib.sha256()
    for part in CHECKOUT_PARTS:
        source = REPO_ROOT / part
        files = sorted(source.rglob("*")) if source.is_dir() else [source]
        for file in files:
            if file.is_file() and "__pycache__" not in file.parts and ".egg-info" not in str(file):
                digest.update(str(file.relative_to(REPO_ROOT)).encode())
                digest.update(file.read_bytes())
    return digest.hexdigest()
