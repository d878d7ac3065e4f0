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

Metadata and artifacts come from `AgentConfig.repository_sources`: each mirror in order,
then the server's own `/tuf/`. A source whose metadata or artifact is refused, missing or
unreachable is logged and passed over for the next; the artifact comes from the source
that served the verified metadata, or a later one. Every source starts from the metadata
already verified in `<home>/tuf/`, so a stale mirror cannot roll it back.

None of these touches the active pointer, so the serving model is untouched. TUF
exceptions are mapped to `edgeops.errors` where they enter: a repository error
(signature, expiry, rollback, hash or length) becomes TrustError, a download problem
TransportError, a broken release UpdateError or SmokeTestError.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from agent.config import AgentConfig, RepositorySource
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

    from agent.ota.delta import Transfer
    from agent.ota.fetcher import ProgressCallback
    from agent.ota.prefetch import TimestampPrefetch

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


def _source_failure(err: Exception) -> bool:
    """Whether `err` is the fault of the source that served it (refused metadata or bytes,
    a download error, an HTTP error such as a 404), so another source may do better."""
    from tuf.api import exceptions as tuf_errors

    return isinstance(err, tuf_errors.RepositoryError | tuf_errors.DownloadError)


def _every_source_failed(
    passed_over: tuple[str, ...], label: str, last: EdgeOpsError
) -> EdgeOpsError:
    """The error to raise when the last source, `label`, failed with `last`: `last` itself
    when it was the only one tried, else an error of its kind naming every source passed
    over (`passed_over`: "<label>: <reason>") and why."""
    if not passed_over:
        return last
    reasons = "; ".join((*passed_over, f"{label}: {last}"))
    combined = type(last)(f"every repository source failed: {reasons}")
    combined.__cause__ = last.__cause__
    return combined


class IncompatibleReleaseError(UpdateError):
    """The release needs a newer agent or onnxruntime than this device has."""


class DowngradeRefusedError(UpdateError):
    """The release is older than the one running and the command was no explicit rollback."""


@dataclass(frozen=True)
class Lookup:
    """A target found in freshly verified metadata, with its signed release info.

    `sources`: where to fetch the artifact, in order: the source that served the verified
    metadata, then the ones configured after it (a mirror whose artifact is tampered or
    missing is passed over for the next). Empty: the server's own `/tuf/targets/`."""

    updater: Updater
    info: TargetFile
    release: ReleaseInfo
    fetcher: FetcherInterface | None = None
    sources: tuple[RepositorySource, ...] = ()
    passed_over: tuple[str, ...] = ()  # "<source>: <why>" of each source that failed so far

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
        self.last_transfer: Transfer | None = None  # how the last download arrived
        # The release target and its signed length that `last_transfer` brought.
        self.last_release: tuple[str, int] | None = None

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

    @property
    def _timestamp_max_length(self) -> int:
        return min(self._config.max_metadata_bytes, 16_384)

    def _prefetching(
        self, fetcher: FetcherInterface, source: RepositorySource
    ) -> TimestampPrefetch | None:
        """`fetcher`, with `source`'s timestamp requested at once on a second connection;
        None for an injected fetcher (one instance, which may not be shared by threads)."""
        from agent.ota.prefetch import TimestampPrefetch

        if self._fetcher is not None:
            return None
        return TimestampPrefetch(
            fetcher, source.metadata_base_url, lambda: self._make_fetcher(None),
            self._timestamp_max_length,
        )

    def _new_tuf_updater(self, fetcher: FetcherInterface, source: RepositorySource) -> Updater:
        """A fresh ngclient Updater reading `source` (it refreshes metadata once per
        lifetime). Each starts from the metadata verified so far in `tuf_dir`, so what one
        source served and ngclient refused (stale, rolled back) never replaces it."""
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
                metadata_base_url=source.metadata_base_url,
                target_dir=str(config.downloads_dir),
                target_base_url=source.targets_base_url,
                fetcher=fetcher,
                config=UpdaterConfig(
                    app_user_agent=f"edgeops-agent/{__version__}",
                    root_max_length=min(caps, 512_000),
                    timestamp_max_length=self._timestamp_max_length,
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

    def _active_record(self, wanted_for: str) -> SlotRecord | None:
        """The active slot's record (unverified: who uses its model hashes it); None
        without a usable one, logged with what it was `wanted_for`."""
        try:
            pointer = self._store.active_pointer()
            if pointer is None:
                return None
            return self._store.read_slot(pointer.slot, verify=False)
        except UpdateError as err:
            logger.warning(
                "device %s: no active slot %s: %s", self._config.device_id, wanted_for, err
            )
            return None

    def _active_release(self) -> ReleaseInfo | None:
        """The release the active slot serves; None without a usable one (nothing to
        protect, and refusing would keep a device with a broken slot from healing)."""
        record = self._active_record("to compare releases with")
        return None if record is None else record.release

    def _lookup(self, target: str, fetcher: FetcherInterface) -> Lookup:
        sources = self._config.repository_sources
        updater, info, index, passed_over = self._refresh(target, fetcher, sources)
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
        return Lookup(updater, info, release, fetcher, sources[index:], passed_over)

    def _refresh(
        self, target: str, fetcher: FetcherInterface, sources: tuple[RepositorySource, ...]
    ) -> tuple[Updater, TargetFile, int, tuple[str, ...]]:
        """Refresh from each source in order until one serves verified metadata that lists
        `target`: (its updater, the target, the source's index, the sources passed over).
        A source that fails (refused metadata, a download error or a 404, or no such
        target: it may be stale) is logged and the next is tried; when all fail, the last
        error names every one."""
        passed_over: list[str] = []
        for index, source in enumerate(sources):
            prefetch = self._prefetching(fetcher, source)
            updater = self._new_tuf_updater(prefetch or fetcher, source)
            error: EdgeOpsError
            try:
                if prefetch is not None:
                    prefetch.start()
                updater.refresh()
                info = updater.get_targetinfo(target)
            except Exception as err:
                error = map_tuf_error(err, "repository metadata")
                if not _source_failure(err):
                    raise error from err
                error.__cause__ = err
            else:
                if info is not None:
                    return updater, info, index, tuple(passed_over)
                error = UpdateError(
                    f"unknown target {target!r}: not in the signed targets metadata"
                )
            finally:
                if prefetch is not None:
                    prefetch.close()
            if index + 1 == len(sources):
                raise _every_source_failed(tuple(passed_over), source.label, error)
            passed_over.append(f"{source.label}: {error}")
            logger.warning(
                "device %s: %s refused for %s: %s; trying the next source",
                self._config.device_id, source.label, target, error,
            )
        raise UpdateError("no repository source is configured")  # sources always has the server

    @property
    def max_opset(self) -> int:
        if self._config.max_onnx_opset is not None:
            return self._config.max_onnx_opset
        import onnxruntime

        return supported_opset(onnxruntime.__version__)

    def download(self, found: Lookup, slot: SlotName) -> Path:
        """Fetch the release into the slot's incoming file; it matches the signed hashes.

        Fewest bytes first: a delta from the active model, the compressed artifact, then
        the artifact itself (`agent.ota.delta`; each checked against the release's signed
        length and sha256 before it lands). `last_transfer` says which, and how many bytes."""
        from agent.ota.delta import Transfer

        destination = self._store.incoming_path(slot)
        destination.parent.mkdir(parents=True, exist_ok=True)
        fetcher = found.fetcher
        try:
            if found.updater.find_cached_target(found.info, str(destination)) is not None:
                self._arrived(found, Transfer("cached", found.info.path, 0))
                return destination
            smaller = self._download_smaller(found, destination)
            if smaller is not None:
                self._arrived(found, smaller)
                return destination
            downloaded = self._fetch_target(found, found.info, destination)
            self._arrived(found, Transfer("full", found.info.path, found.info.length))
            return downloaded
        except Exception as err:
            if (following := self._next_artifact_source(found, err)) is not None:
                return self.download(following, slot)
            raise self._artifact_error(found, err) from err
        finally:
            _close(fetcher)

    def _arrived(self, found: Lookup, transfer: Transfer) -> None:
        self.last_transfer = transfer
        self.last_release = (found.info.path, found.info.length)

    def _download_smaller(self, found: Lookup, destination: Path) -> Transfer | None:
        """Rebuild the release into `destination` from the delta signed for the active
        model, else from its compressed copy; None (logged) to fetch the artifact itself."""
        from agent.ota import delta

        places = (destination, self._config.downloads_dir / "transfers")
        fault = self._fault or delta.no_fault

        def fetch(info: TargetFile, path: Path) -> Path:
            return self._fetch_target(found, info, path)

        active = self._active_record("to build a delta on")  # the delta code hashes its model
        return delta.fetch_delta(
            found.updater, found.info, None if active is None else active.model_path, places,
            fetch, fault, recorded_sha256=None if active is None else active.sha256,
        ) or delta.fetch_compressed(found.updater, found.info, places, fetch, fault)

    def _fetch_target(self, found: Lookup, info: TargetFile, destination: Path) -> Path:
        """Download the signed target `info` from `found`'s source into `destination`.

        With our fetcher this is ngclient's `download_target` without its second pass and
        its copy: the same URL (consistent snapshot: `<dir>/<sha256>.<name>`), the same
        length and hash check, made as the bytes arrive; the verified file is renamed."""
        from agent.ota.fetcher import ResumableFetcher

        fetcher, base = found.fetcher, self._artifact_base(found)
        if not isinstance(fetcher, ResumableFetcher) or not self._consistent_snapshot():
            return Path(found.updater.download_target(info, str(destination), base))
        directory, sep, name = info.path.rpartition("/")
        url = f"{base}{directory}{sep}{info.hashes['sha256']}.{name}"
        return fetcher.download_verified(url, info.length, info.hashes, destination)

    def _artifact_base(self, found: Lookup) -> str:
        """The targets URL to fetch `found`'s artifact from."""
        return found.sources[0].targets_base_url if found.sources else self._config.targets_base_url

    def _next_artifact_source(self, found: Lookup, err: Exception) -> Lookup | None:
        """`found` for the next source if the current one failed to serve the artifact
        (tampered bytes, a 404, a broken download) and another is left; else None."""
        if len(found.sources) < 2 or not _source_failure(err):
            return None
        error = map_tuf_error(err, "artifact")
        label = found.sources[0].label
        logger.warning(
            "device %s: artifact %s from %s refused: %s; trying the next source",
            self._config.device_id, found.info.path, label, error,
        )
        return dataclasses.replace(
            found, sources=found.sources[1:], passed_over=(*found.passed_over, f"{label}: {error}")
        )

    def _artifact_error(self, found: Lookup, err: Exception) -> EdgeOpsError:
        """The error for an artifact download that failed with `err` at the last source."""
        error = map_tuf_error(err, "artifact")
        if not found.sources or not _source_failure(err):
            return error
        return _every_source_failed(found.passed_over, found.sources[0].label, error)

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
