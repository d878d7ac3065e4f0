"""The I/O steps of an over-the-air update: TUF lookup, download, stage, smoke test.

`update_runner` calls these in the order the state machine (`update_machine`) decides:

    lookup         refresh TUF metadata, find the target, parse its signed release info,
                   and refuse what this agent cannot run (compatibility, size cap),
                   all before a single artifact byte is fetched
    download       fetch the artifact into the inactive slot's incoming file (ngclient
                   verifies length and hashes against the signed targets metadata; the
                   fetcher resumes broken or interrupted downloads with HTTP Range)
    stage          re-hash the verified file and move it into the slot, then its record
    smoke_test     load the staged model and run its golden vectors

None of these touches the active pointer, so the serving model is untouched. TUF
exceptions are mapped to `edgeops.errors` where they enter: a repository error
(signature, expiry, rollback, hash or length) becomes TrustError, a download problem
TransportError, a broken release UpdateError or SmokeTestError.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from agent.config import AgentConfig
from agent.ota.compatibility import downgrade, incompatibility, supported_opset
from agent.ota.model_store import ModelStore, SlotName, SlotRecord
from agent.runtime import ModelRuntime
from edgeops import __version__
from edgeops.errors import EdgeOpsError, TransportError, TrustError, UpdateError
from edgeops.schemas import ReleaseInfo, target_path

if TYPE_CHECKING:  # pragma: no cover
    from tuf.api.metadata import TargetFile
    from tuf.ngclient import Updater
    from tuf.ngclient.fetcher import FetcherInterface

    from agent.ota.fetcher import ProgressCallback

# tuf (with securesystemslib and urllib3) and our fetcher are imported where an update
# starts, not at agent start: ~5 MB of RSS a device only pays for while it updates.

logger = logging.getLogger(__name__)


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


def _trust_error(err: Exception, what: str) -> TrustError:
    from tuf.api import exceptions as tuf_errors

    reasons: list[tuple[type[Exception], str]] = [
        (tuf_errors.LengthOrHashMismatchError, "hash mismatch"),
        (tuf_errors.ExpiredMetadataError, "expired metadata"),
        (tuf_errors.UnsignedMetadataError, "bad signature"),
        (tuf_errors.BadVersionNumberError, "version rollback"),
    ]
    label = next((text for kind, text in reasons if isinstance(err, kind)), "untrusted data")
    if label == "hash mismatch" and "length" in str(err).lower():
        label = "length mismatch"
    if label == "version rollback" and str(err).startswith("Expected"):
        label = "version mismatch"  # metadata other than the version its parent signed
    return TrustError(f"{what} {label}: {err}")


def map_tuf_error(err: Exception, what: str) -> EdgeOpsError:
    """The EdgeOps error for a tuf/ngclient failure while handling `what`."""
    from tuf.api import exceptions as tuf_errors

    if isinstance(err, tuf_errors.RepositoryError):
        return _trust_error(err, what)
    if isinstance(err, tuf_errors.DownloadLengthMismatchError):
        return TrustError(f"{what} length mismatch: {err}")
    if isinstance(err, tuf_errors.SlowRetrievalError):
        return TransportError(f"{what}: download failed: slow retrieval: {err}")
    if isinstance(err, tuf_errors.DownloadHTTPError):
        return TransportError(f"{what}: server answered HTTP {err.status_code}")
    if isinstance(err, tuf_errors.DownloadError):
        cause = err.__cause__ or err
        return TransportError(f"{what}: download failed: {cause}")
    if isinstance(err, OSError):
        return UpdateError(f"{what}: local disk error: {err}")
    return UpdateError(f"{what}: {err}")


def _close(fetcher: FetcherInterface | None) -> None:
    """Close our fetcher's kept-alive connections (other fetchers manage their own)."""
    from agent.ota.fetcher import ResumableFetcher

    if isinstance(fetcher, ResumableFetcher):
        fetcher.close()


class IncompatibleReleaseError(UpdateError):
    """The release needs a newer agent or onnxruntime than this device has."""


class DowngradeRefusedError(UpdateError):
    """The release is older than the one running and the command was no explicit rollback."""


@dataclass(frozen=True)
class Lookup:
    """A target found in freshly verified metadata, with its signed release info."""

    updater: Updater
    info: TargetFile
    release: ReleaseInfo
    fetcher: FetcherInterface | None = None

    @property
    def sha256(self) -> str:
        return self.info.hashes["sha256"]


class ReleaseUpdater:
    """The I/O steps of an update for one agent home. One instance per agent; not re-entrant."""

    def __init__(
        self,
        config: AgentConfig,
        store: ModelStore,
        *,
        fetcher: FetcherInterface | None = None,
        fault: Callable[[str], None] | None = None,
    ) -> None:
        self._config = config
        self._store = store
        self._fetcher = fetcher
        self._fault = fault

    def _make_fetcher(self, on_progress: ProgressCallback | None) -> FetcherInterface:
        if self._fetcher is not None:
            return self._fetcher
        from agent.ota.fetcher import FetchPolicy, ResumableFetcher

        config = self._config
        return ResumableFetcher(
            FetchPolicy(
                timeout_s=config.request_timeout_s,
                retries=config.download_retries,
                backoff_base_s=config.download_backoff_s,
                min_bytes_per_s=config.download_min_bytes_per_s,
                grace_s=config.request_timeout_s,
            ),
            partial_dir=config.downloads_dir / "partial",
            on_progress=on_progress,
            # An enrolled device trusts its fleet's CA for HTTPS, beside the system's.
            ca_file=config.identity.ca_file if config.identity.ca_file.exists() else None,
            user_agent=f"edgeops-agent/{__version__}",
            fault=self._fault,
        )

    def _new_tuf_updater(self, fetcher: FetcherInterface) -> Updater:
        """A fresh ngclient Updater (it refreshes metadata once per lifetime)."""
        from tuf.api import exceptions as tuf_errors
        from tuf.ngclient import Updater, UpdaterConfig

        config = self._config
        config.downloads_dir.mkdir(parents=True, exist_ok=True)
        try:
            bootstrap = config.trusted_root_path.read_bytes()
        except FileNotFoundError:
            bootstrap = None  # fall back to the cached tuf/root.json
        except OSError as err:
            raise UpdateError(f"cannot read the trusted root: {err}") from err
        caps = config.max_metadata_bytes
        try:
            return Updater(
                metadata_dir=str(config.tuf_dir),
                metadata_base_url=config.metadata_base_url,
                target_dir=str(config.downloads_dir),
                target_base_url=config.targets_base_url,
                fetcher=fetcher,
                config=UpdaterConfig(
                    app_user_agent=f"edgeops-agent/{__version__}",
                    root_max_length=min(caps, 512_000),
                    timestamp_max_length=min(caps, 16_384),
                    snapshot_max_length=caps,
                    targets_max_length=caps,
                ),
                bootstrap=bootstrap,
            )
        except (OSError, tuf_errors.RepositoryError) as err:
            raise map_tuf_error(err, "trusted root") from err

    # The steps -----------------------------------------------------------------------

    def lookup(
        self,
        target: str,
        on_progress: ProgressCallback | None = None,
        *,
        allow_downgrade: bool = False,
    ) -> Lookup:
        """Refresh metadata and find `target`; refuse what this agent must not download,
        including, unless `allow_downgrade`, a release older than the active one."""
        fetcher = self._make_fetcher(on_progress)
        try:
            found = self._lookup(target, fetcher)
            running = self._active_release()
            reason = downgrade(
                None if running is None else (running.model, running.version),
                (found.release.model, found.release.version),
                allowed=allow_downgrade,
            )
            if reason is not None:
                raise DowngradeRefusedError(reason)
            return found
        except BaseException:
            _close(fetcher)  # a Lookup that is returned closes it after the download
            raise

    def _active_release(self) -> ReleaseInfo | None:
        """The release the active slot serves; None without a usable one (nothing to
        protect, and refusing would keep a device with a broken slot from healing)."""
        try:
            pointer = self._store.active_pointer()
            if pointer is None:
                return None
            return self._store.read_slot(pointer.slot, verify=False).release
        except UpdateError as err:
            logger.warning(
                "device %s: no active release to compare with: %s", self._config.device_id, err
            )
            return None

    def _lookup(self, target: str, fetcher: FetcherInterface) -> Lookup:
        updater = self._new_tuf_updater(fetcher)
        try:
            updater.refresh()
            info = updater.get_targetinfo(target)
        except Exception as err:
            raise map_tuf_error(err, "repository metadata") from err
        if info is None:
            raise UpdateError(f"unknown target {target!r}: not in the signed targets metadata")
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
        if "sha256" not in info.hashes:
            raise TrustError(f"target {info.path} is not signed with a sha256 hash")
        if info.length > self._config.max_artifact_bytes:
            raise UpdateError(
                f"artifact of {info.length} bytes exceeds this agent's cap of "
                f"{self._config.max_artifact_bytes} bytes"
            )
        reason = incompatibility(
            release.min_agent_version, release.required_opset, __version__, self.max_opset
        )
        if reason is not None:
            raise IncompatibleReleaseError(reason)
        return Lookup(updater, info, release, fetcher)

    @property
    def max_opset(self) -> int:
        if self._config.max_onnx_opset is not None:
            return self._config.max_onnx_opset
        import onnxruntime

        return supported_opset(onnxruntime.__version__)

    def download(self, found: Lookup, slot: SlotName) -> Path:
        """Fetch the artifact into the slot's incoming file; it matches the signed hashes.

        With our fetcher this is ngclient's `download_target` without its second pass and
        its copy: the same URL (consistent snapshot: `<dir>/<sha256>.<name>`), the same
        length and hash check, made as the bytes arrive; the verified file is renamed."""
        from agent.ota.fetcher import ResumableFetcher

        destination = self._store.incoming_path(slot)
        destination.parent.mkdir(parents=True, exist_ok=True)
        fetcher = found.fetcher
        try:
            if found.updater.find_cached_target(found.info, str(destination)) is not None:
                return destination
            if not isinstance(fetcher, ResumableFetcher) or not self._consistent_snapshot():
                return Path(found.updater.download_target(found.info, str(destination)))
            directory, sep, name = found.info.path.rpartition("/")
            url = f"{self._config.targets_base_url}{directory}{sep}{found.sha256}.{name}"
            return fetcher.download_verified(
                url, found.info.length, found.info.hashes, destination
            )
        except Exception as err:
            raise map_tuf_error(err, "artifact") from err
        finally:
            _close(fetcher)

    def _consistent_snapshot(self) -> bool:
        """Whether the root ngclient just verified (and cached) uses consistent snapshots."""
        from tuf.api.metadata import Metadata

        try:
            root = Metadata.from_file(str(self._config.tuf_dir / "root.json"))
        except Exception:  # unreadable cache: let ngclient build the URL itself
            return False
        return bool(getattr(root.signed, "consistent_snapshot", False))

    def stage(self, found: Lookup, downloaded: Path, slot: SlotName) -> SlotRecord:
        """Move the download, verified against the signed hashes moments ago in this
        process, into the inactive `slot` (a rename: no second copy, no second hash)."""
        try:
            return self._store.stage_file(
                slot, downloaded, found.info.path, found.release, found.sha256,
                length=found.info.length,
            )
        except OSError as err:
            raise UpdateError(f"cannot write slot {slot}: {err}") from err

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
