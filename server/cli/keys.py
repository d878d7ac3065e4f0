"""`edgeops server keys`: the TUF signing keys of a server home.

    list                         roles, thresholds, keys, and which are on this machine
    create --role R              add a key to R (a new root version)
    rotate --role R [--keyid K]  replace a key; root signed by the old and new thresholds
    revoke --keyid K             remove a key everywhere; metadata signed only by it is refused
    renew-root                   the same root with a new version and expiry
    sign-root FILE --key PEM     add a signature to an exported root (on the offline machine)
    import-root FILE             verify an offline-signed root and install it

`--out FILE` on create/rotate/revoke/renew-root writes the new root, signed by whatever
root keys are here (none, for a home made by `edgeops server init`), instead of installing
it: take it to the holders of the root keys, `sign-root` there, and `import-root` it back.
Passphrases come from a file (`--passphrase-file FILE`, `-` for stdin) or the
`EDGEOPS_ROOT_KEY_PASSPHRASE` variable, never from the command line.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from edgeops.cli import JsonOption, ServerHomeOption, emit
from edgeops.errors import ConfigError

__all__ = ["PASSPHRASE_ENV", "PassphraseFileOption", "app", "read_passphrase", "root_custody"]

PASSPHRASE_ENV = "EDGEOPS_ROOT_KEY_PASSPHRASE"

app = typer.Typer(
    name="keys",
    help="Manage TUF keys: list, create, rotate, revoke; sign a root offline.",
    no_args_is_help=True,
)

HomeOption = ServerHomeOption
OfflineOut = Annotated[
    Path | None,
    typer.Option(
        "--offline-out",
        "--out",
        help="Write the unsigned-by-all new root here instead of installing it.",
    ),
]
PassphraseFileOption = Annotated[
    Path | None,
    typer.Option(
        "--passphrase-file",
        help=f"File holding the key's passphrase ('-': read stdin). Default: ${PASSPHRASE_ENV}.",
    ),
]
KeyDirOption = Annotated[
    Path | None,
    typer.Option(
        "--key-dir",
        help="Write the new private key here (a root key's offline holder) instead of keys/.",
    ),
]


def read_passphrase(path: Path | None, *, required: bool = False) -> bytes | None:
    """The passphrase in `path` ('-': stdin), else in $EDGEOPS_ROOT_KEY_PASSPHRASE, without
    its trailing newline; None if neither is given (ConfigError if `required`)."""
    if path is not None and str(path) == "-":
        data = sys.stdin.buffer.read()
    elif path is not None:
        try:
            data = path.read_bytes()
        except OSError as err:
            raise ConfigError(f"cannot read the passphrase file {path}: {err}") from err
    elif PASSPHRASE_ENV in os.environ:
        data = os.environ[PASSPHRASE_ENV].encode()
    elif required:
        raise ConfigError(
            f"no passphrase: give --passphrase-file FILE ('-' for stdin) or set {PASSPHRASE_ENV}"
        )
    else:
        return None
    passphrase = data.rstrip(b"\r\n")
    if not passphrase:
        raise ConfigError(f"the passphrase from {path or PASSPHRASE_ENV} is empty")
    return passphrase


def root_custody(home: Path, offline_keys: Path | None, passphrase_files: list[Path]) -> Any:
    """Where `edgeops server init` writes the root keys: `offline_keys` (default
    `<home>.root-keys`), encrypted with the passphrases in `passphrase_files` (one for all
    keys, or one per key; default $EDGEOPS_ROOT_KEY_PASSPHRASE, if set)."""
    from server.app.home import default_root_key_folder
    from server.trust.repository import RootKeyCustody

    files: list[Path | None] = list(passphrase_files) or [None]
    if sum(str(f) == "-" for f in files) > 1:
        raise ConfigError("only one --root-passphrase-file can be '-' (stdin)")
    passphrases = tuple(p for p in (read_passphrase(f) for f in files) if p is not None)
    return RootKeyCustody(
        directory=offline_keys or default_root_key_folder(home), passphrases=passphrases
    )


def _repo(home: Path) -> Any:
    from server.config.settings import load_settings
    from server.trust.repository import TufRepository

    return TufRepository(load_settings(home).tuf_dir)


def _audit(home: Path, action: str, target: str, reason: str) -> None:
    """The key change as an entry of the home's audit chain, by the CLI's user."""
    import getpass

    from server.config.settings import load_settings
    from server.db.engine import close_database, open_database
    from server.governance.audit_chain import record

    session_factory = open_database(load_settings(home).resolved_database_url)
    try:
        record(
            session_factory,
            f"{getpass.getuser()} (CLI on the server)",
            action,
            target,
            reason,
            resource="keys",
        )
    finally:
        close_database(session_factory)


def _summary(result: dict[str, Any]) -> str:
    if result.get("installed"):
        return f"installed root v{result['root_version']}"
    return (
        f"wrote root v{result['root_version']} to {result['exported']}: sign it with "
        f"'edgeops server keys sign-root', then 'edgeops server keys import-root'"
    )


@app.command("list")
def list_(home: HomeOption, as_json: JsonOption = False) -> None:
    """Show every role's threshold and keys, marking keys whose private half is here."""
    from server.trust.keys import list_keys

    result = list_keys(_repo(home))
    lines = [f"root v{result['root_version']} (expires {result['root_expires']})"]
    for role, info in result["roles"].items():
        lines.append(f"{role:<10} threshold {info['threshold']} of {len(info['keyids'])}")
    for key in result["keys"]:
        where = "online" if key["online"] else "offline"
        lines.append(f"  {key['keyid'][:16]}  {','.join(key['roles']):<20} {where}")
    emit(result, as_json, "\n".join(lines))


@app.command("create")
def create(
    home: HomeOption,
    role: Annotated[str, typer.Option("--role", help="root, targets, snapshot or timestamp")],
    out: OfflineOut = None,
    key_dir: KeyDirOption = None,
    passphrase_file: PassphraseFileOption = None,
    as_json: JsonOption = False,
) -> None:
    """Generate a key and add it to ROLE in a new root version."""
    from server.trust.keys import create_key

    result = create_key(
        _repo(home),
        role,
        offline_out=out,
        key_dir=key_dir,
        passphrase=read_passphrase(passphrase_file),
    )
    _audit(
        home, "keys.create", f"key {result['keyid'][:16]}", f"new {role} key; {_summary(result)}"
    )
    emit(result, as_json, f"new {role} key {result['keyid'][:16]}; {_summary(result)}")


@app.command("rotate")
def rotate(
    home: HomeOption,
    role: Annotated[str, typer.Option("--role", help="root, targets, snapshot or timestamp")],
    keyid: Annotated[
        str | None, typer.Option("--keyid", help="Prefix of the key to replace")
    ] = None,
    out: OfflineOut = None,
    key_dir: KeyDirOption = None,
    passphrase_file: PassphraseFileOption = None,
    as_json: JsonOption = False,
) -> None:
    """Replace a key of ROLE with a new one (the old key is revoked)."""
    from server.trust.keys import rotate_key

    result = rotate_key(
        _repo(home),
        role,
        keyid,
        offline_out=out,
        key_dir=key_dir,
        passphrase=read_passphrase(passphrase_file),
    )
    _audit(
        home,
        "keys.rotate",
        f"key {result['replaced'][:16]}",
        f"{role} key replaced by {result['keyid'][:16]}; {_summary(result)}",
    )
    emit(
        result,
        as_json,
        f"{role} key {result['replaced'][:16]} -> {result['keyid'][:16]}; {_summary(result)}",
    )


@app.command("revoke")
def revoke(
    home: HomeOption,
    keyid: Annotated[str, typer.Option("--keyid", help="Prefix of the key to revoke")],
    out: OfflineOut = None,
    as_json: JsonOption = False,
) -> None:
    """Remove a key from every role; clients with the new root refuse what it signs."""
    from server.trust.keys import revoke_key

    result = revoke_key(_repo(home), keyid, offline_out=out)
    _audit(
        home,
        "keys.revoke",
        f"key {result['revoked'][:16]}",
        f"revoked from {', '.join(result['roles'])}; {_summary(result)}",
    )
    emit(
        result,
        as_json,
        f"revoked {result['revoked'][:16]} ({', '.join(result['roles'])}); {_summary(result)}",
    )


@app.command("renew-root")
def renew_root(home: HomeOption, out: OfflineOut = None, as_json: JsonOption = False) -> None:
    """Propose the same root with the next version and a fresh expiry."""
    from server.trust.keys import renew_root as renew

    result = renew(_repo(home), offline_out=out)
    _audit(home, "keys.renew_root", f"root v{result['root_version']}", _summary(result))
    emit(result, as_json, _summary(result))


@app.command("sign-root")
def sign_root(
    root_file: Annotated[Path, typer.Argument(help="Root metadata exported with --out")],
    key: Annotated[Path, typer.Option("--key", help="A root private key (PEM, encrypted or not)")],
    passphrase_file: PassphraseFileOption = None,
    as_json: JsonOption = False,
) -> None:
    """Add one signature to an exported root. Runs anywhere: needs no server home."""
    from server.trust.keys import sign_root_file

    keyid = sign_root_file(root_file, key, read_passphrase(passphrase_file))
    emit(
        {"file": str(root_file), "signed_by": keyid},
        as_json,
        f"signed {root_file} with {keyid[:16]}",
    )


@app.command("import-root")
def import_root_(
    home: HomeOption,
    root_file: Annotated[Path, typer.Argument(help="The signed root metadata")],
    as_json: JsonOption = False,
) -> None:
    """Verify a root signed offline (old and new thresholds) and install it."""
    from server.trust.keys import import_root, load_root_file

    version = import_root(_repo(home), load_root_file(root_file))
    _audit(
        home, "keys.import_root", f"root v{version}", f"installed root v{version} from {root_file}"
    )
    emit({"root_version": version, "installed": True}, as_json, f"installed root v{version}")
