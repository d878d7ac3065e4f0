"""Over-the-air update of one release: fetch with TUF, stage, smoke-test, switch.

The update is a chain of small explicit steps, each announced through `on_state` before
it starts, so the daemon can publish it and a later persisted state machine can wrap
each step:

    downloading    refresh TUF metadata, look up the target, download it (ngclient
                   verifies length and hashes against the signed targets metadata)
    verifying      parse the signed release info, check it names this target, copy the
                   bytes into the inactive slot and check them again
    smoke_testing  load the staged model and run its golden vectors
    switching      swap the active pointer (the commit point)

Any failure leaves the active pointer, and so the serving model, untouched. TUF
exceptions are mapped to `edgeops.errors` where they enter: a repository error
(signature, expiry, rollback, hash or length) becomes TrustError, a download problem
TransportError, a broken release UpdateError or SmokeTestError.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tuf.api import exceptions as tuf_errors
from tuf.api.metadata import TargetFile
from tuf.ngclient import Updater, UpdaterConfig
from tuf.ngclient.fetcher import FetcherInterface
from tuf.ngclient.urllib3_fetcher import Urllib3Fetcher

from agent.config import AgentConfig
from agent.model_store import ModelStore, SlotName, SlotRecord
from agent.runtime import ModelRuntime
from edgeops import __version__
from edgeops.errors import EdgeOpsError, TransportError, TrustError, UpdateError
from edgeops.messages import AgentState
from edgeops.schemas import ReleaseInfo, target_path

logger = logging.getLogger(__name__)

StateCallback = Callable[[AgentState], None]


@dataclass(frozen=True)
class InstalledModel:
    """A model that is active on disk and loaded."""

    record: SlotRecord
    runtime: ModelRuntime

    @property
    def release(self) -> ReleaseInfo:
        return self.record.release

    @property
    def target(self) -> str:
        return self.record.target

    @property
    def slot(self) -> SlotName:
        return self.record.slot


class _Fetcher(Urllib3Fetcher):
    """urllib3 fetcher whose errors mid-stream also surface as DownloadError."""

    def _fetch(self, url: str) -> Iterator[bytes]:
        chunks = super()._fetch(url)

        def guarded() -> Iterator[bytes]:
            try:
                yield from chunks
            except tuf_errors.DownloadError:
                raise
            except Exception as err:  # urllib3 protocol/connection errors while streaming
                raise tuf_errors.DownloadError(f"download of {url} broke off: {err}") from err

        return guarded()


def _trust_error(err: tuf_errors.RepositoryError, what: str) -> TrustError:
    reasons: list[tuple[type[Exception], str]] = [
        (tuf_errors.LengthOrHashMismatchError, "hash mismatch"),
        (tuf_errors.ExpiredMetadataError, "expired metadata"),
        (tuf_errors.UnsignedMetadataError, "bad signature"),
        (tuf_errors.BadVersionNumberError, "version rollback"),
    ]
    label = next((text for kind, text in reasons if isinstance(err, kind)), "untrusted data")
    if label == "hash mismatch" and "length" in str(err).lower():
        label = "length mismatch"
    return TrustError(f"{what} {label}: {err}")


def map_tuf_error(err: Exception, what: str) -> EdgeOpsError:
    """The EdgeOps error for a tuf/ngclient failure while handling `what`."""
    if isinstance(err, tuf_errors.RepositoryError):
        return _trust_error(err, what)
    if isinstance(err, tuf_errors.DownloadLengthMismatchError):
        return TrustError(f"{what} length mismatch: {err}")
    if isinstance(err, tuf_errors.DownloadHTTPError):
        return TransportError(f"{what}: server answered HTTP {err.status_code}")
    if isinstance(err, tuf_errors.DownloadError):
        cause = err.__cause__ or err
        return TransportError(f"{what}: download failed: {cause}")
    if isinstance(err, OSError):
        return UpdateError(f"{what}: local disk error: {err}")
    return UpdateError(f"{what}: {err}")


class ReleaseUpdater:
    """Applies one target to an agent home. One instance per agent; not re-entrant."""

    def __init__(
        self,
        config: AgentConfig,
        store: ModelStore,
        *,
        fetcher: FetcherInterface | None = None,
    ) -> None:
        self._config = config
        self._store = store
        self._fetcher = fetcher

    # The steps -----------------------------------------------------------------------

    def _new_tuf_updater(self) -> Updater:
        """A fresh ngclient Updater (it refreshes metadata once per lifetime)."""
        config = self._config
        config.downloads_dir.mkdir(parents=True, exist_ok=True)
        try:
            bootstrap = config.trusted_root_path.read_bytes()
        except FileNotFoundError:
            bootstrap = None  # fall back to the cached tuf/root.json
        except OSError as err:
            raise UpdateError(f"cannot read the trusted root: {err}") from err
        fetcher = self._fetcher or _Fetcher(
            socket_timeout=config.request_timeout_s,  # type: ignore[arg-type]
            app_user_agent=f"edgeops-agent/{__version__}",
        )
        try:
            return Updater(
                metadata_dir=str(config.tuf_dir),
                metadata_base_url=config.metadata_base_url,
                target_dir=str(config.downloads_dir),
                target_base_url=config.targets_base_url,
                fetcher=fetcher,
                config=UpdaterConfig(app_user_agent=f"edgeops-agent/{__version__}"),
                bootstrap=bootstrap,
            )
        except (OSError, tuf_errors.RepositoryError) as err:
            raise map_tuf_error(err, "trusted root") from err

    def download(self, target: str) -> tuple[TargetFile, Path]:
        """Refresh metadata and fetch `target`; the file returned matches the signed hashes."""
        updater = self._new_tuf_updater()
        try:
            updater.refresh()
            info = updater.get_targetinfo(target)
        except Exception as err:
            raise map_tuf_error(err, "repository metadata") from err
        if info is None:
            raise UpdateError(f"unknown target {target!r}: not in the signed targets metadata")
        try:
            path = updater.download_target(info)
        except Exception as err:
            raise map_tuf_error(err, "artifact") from err
        return info, Path(path)

    def verify_and_stage(self, info: TargetFile, downloaded: Path) -> SlotRecord:
        """Check the signed release info and copy the artifact into the inactive slot."""
        try:
            release = ReleaseInfo.from_custom(info.custom)
        except ValueError as err:  # pydantic's ValidationError is a ValueError
            raise UpdateError(f"target {info.path} carries no valid release info: {err}") from err
        expected_path = target_path(release.model, release.version, release.format)
        if expected_path != info.path:
            raise UpdateError(
                f"target {info.path} describes {release.model} v{release.version} "
                f"({release.format}), whose path would be {expected_path}"
            )
        sha256 = info.hashes.get("sha256")
        if sha256 is None:
            raise TrustError(f"target {info.path} is not signed with a sha256 hash")
        try:
            data = downloaded.read_bytes()
        except OSError as err:
            raise UpdateError(f"cannot read the downloaded {info.path}: {err}") from err
        if len(data) != info.length:
            raise TrustError(
                f"artifact length mismatch: {len(data)} bytes on disk, {info.length} signed"
            )
        slot = self._store.staging_slot()
        try:
            record = self._store.stage(slot, data, info.path, release, sha256)
        except OSError as err:
            raise UpdateError(f"cannot write slot {slot}: {err}") from err
        downloaded.unlink(missing_ok=True)  # the slot holds the bytes now
        return record

    def smoke_test(self, record: SlotRecord) -> ModelRuntime:
        runtime = ModelRuntime(
            record.model_path, record.release, intra_op_threads=self._config.intra_op_threads
        )
        deviation = runtime.smoke_test(record.release.golden)
        logger.info(
            "device %s: %s passed its smoke test (max deviation %.3g)",
            self._config.device_id,
            record.target,
            deviation,
        )
        return runtime

    def switch(self, record: SlotRecord) -> None:
        try:
            self._store.activate(record.slot)
        except OSError as err:
            raise UpdateError(f"cannot switch to slot {record.slot}: {err}") from err

    # The chain -----------------------------------------------------------------------

    def apply(self, target: str, on_state: StateCallback) -> InstalledModel:
        """Run every step for `target`; raise an EdgeOpsError if any of them refuses."""
        device = self._config.device_id
        logger.info("device %s: updating to %s", device, target)
        on_state("downloading")
        info, downloaded = self.download(target)
        on_state("verifying")
        record = self.verify_and_stage(info, downloaded)
        on_state("smoke_testing")
        runtime = self.smoke_test(record)
        on_state("switching")
        self.switch(record)
        logger.info("device %s: switched to %s in slot %s", device, target, record.slot)
        return InstalledModel(record=record, runtime=runtime)
