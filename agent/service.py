"""The agent as a systemd service: the unit file `edgeops agent install-service` writes.

The unit runs `edgeops agent run` as a dedicated system user, restarts it when it fails or
stops feeding the watchdog, and confines it: nothing on the file system is writable but
its home (`ProtectSystem=strict` + `ReadWritePaths=`), no privilege gain, a memory cap.
Logs go to the journal in the `journal` format of `agent.logging_setup`.
"""

from __future__ import annotations

import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from edgeops.atomic_io import write_bytes_atomic
from edgeops.errors import ConfigError

__all__ = ["DEFAULT_UNIT_DIR", "ServiceSpec", "enable_instructions", "render_unit", "write_unit"]

DEFAULT_UNIT_DIR = Path("/etc/systemd/system")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]*$")
_USER = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
_MEMORY = re.compile(r"^(\d+[KMGT]?|\d{1,3}%|infinity)$")
# ProtectHome=yes hides these and PrivateTmp=yes replaces these: a home or an installation
# below one of them gets ProtectHome=read-only (ReadWritePaths= still opens the home) or
# keeps the real /tmp.
_HOME_ROOTS = (Path("/home"), Path("/root"), Path("/run/user"))
_TMP_ROOTS = (Path("/tmp"), Path("/var/tmp"))


def _below(paths: tuple[Path, ...], roots: tuple[Path, ...]) -> bool:
    return any(path.is_relative_to(root) for path in paths for root in roots)


@dataclass(frozen=True)
class ServiceSpec:
    """What the unit says. `command` is how to start `edgeops` (absolute paths)."""

    home: Path
    command: tuple[str, ...]
    name: str = "edgeops-agent"
    user: str = "edgeops"
    memory_max: str = "512M"
    watchdog_s: int = 30

    def __post_init__(self) -> None:
        if not self.home.is_absolute():
            raise ConfigError(f"the service's home must be an absolute path, got {self.home}")
        if not _NAME.match(self.name):
            raise ConfigError(f"service name {self.name!r}: use letters, digits and . _ @ -")
        if not _USER.match(self.user):
            raise ConfigError(f"user {self.user!r} is not a valid system user name")
        if not _MEMORY.match(self.memory_max):
            raise ConfigError(
                f"--memory-max {self.memory_max!r}: give bytes with K, M, G or T, a percentage, "
                "or 'infinity'"
            )
        if self.watchdog_s < 0:
            raise ConfigError(f"--watchdog-s must be 0 (off) or more, got {self.watchdog_s}")
        if not self.command or not Path(self.command[0]).is_absolute():
            raise ConfigError(
                f"the service's command must start with an absolute path: {self.command}"
            )

    @property
    def unit_name(self) -> str:
        return f"{self.name}.service"


def edgeops_command() -> tuple[str, ...]:
    """The `edgeops` of this installation: its console script beside the interpreter, or
    the interpreter running the module (a checkout without the script)."""
    script = Path(sys.executable).parent / "edgeops"
    return (str(script),) if script.is_file() else (sys.executable, "-m", "edgeops.cli")


def _quote(path: Path | str) -> str:
    # systemd unit syntax accepts shell-style double quotes in ExecStart= and path lists.
    text = str(path)
    if any(c.isspace() or c in "\"'\\" for c in text):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return text


def render_unit(spec: ServiceSpec) -> str:
    """The unit file's text."""
    home = spec.home
    exec_start = " ".join(
        _quote(part)
        for part in (
            *spec.command,
            "-v",
            "agent",
            "run",
            "--home",
            str(home),
            "--log-format",
            "journal",
        )
    )
    used = (home, Path(spec.command[0]))
    protect_home = "read-only" if _below(used, _HOME_ROOTS) else "yes"
    private_tmp = "no" if _below(used, _TMP_ROOTS) else "yes"
    # `agent run` feeds it while the agent's threads are alive (agent.systemd_notify)
    watchdog = f"WatchdogSec={spec.watchdog_s}\n" if spec.watchdog_s else ""
    return f"""\
# Written by `edgeops agent install-service`; regenerate it rather than editing it.
[Unit]
Description=EdgeOps device agent ({home})
After=network-online.target
Wants=network-online.target

[Service]
Type=notify
NotifyAccess=main
ExecStart={exec_start}
User={spec.user}
Group={spec.user}
Restart=on-failure
RestartSec=5
{watchdog}TimeoutStopSec=30
Environment=PYTHONUNBUFFERED=1
SyslogIdentifier={spec.name}
MemoryMax={spec.memory_max}
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome={protect_home}
ReadWritePaths={_quote(home)}
PrivateTmp={private_tmp}
PrivateDevices=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectControlGroups=yes
RestrictSUIDSGID=yes
LockPersonality=yes
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6

[Install]
WantedBy=multi-user.target
"""


def write_unit(spec: ServiceSpec, path: Path) -> Path:
    """Write the unit atomically; ConfigError naming the path if it cannot be written."""
    try:
        write_bytes_atomic(path, render_unit(spec).encode(), mode=0o644)
    except OSError as err:
        raise ConfigError(
            f"cannot write the unit {path}: {err.strerror or err}; run as root (sudo) or pass "
            "--output FILE and copy it into /etc/systemd/system yourself"
        ) from err
    return path


def enable_instructions(spec: ServiceSpec, path: Path) -> list[str]:
    """The commands that create the user, hand it the home and start the service."""
    home, user = shlex.quote(str(spec.home)), spec.user
    steps = [
        f"sudo useradd --system --home-dir {home} --shell /usr/sbin/nologin {user}",
        f"sudo chown -R {user}:{user} {home}",
    ]
    installed = DEFAULT_UNIT_DIR / spec.unit_name
    if path.resolve() != installed:
        steps.append(f"sudo install -m 0644 {shlex.quote(str(path))} {installed}")
    steps += [
        "sudo systemctl daemon-reload",
        f"sudo systemctl enable --now {spec.unit_name}",
        f"journalctl -u {spec.unit_name} -f",
    ]
    return steps
