"""Fetch the real FLUX.2 [dev] checkpoint (and fal's Turbo LoRA) from the Hugging Face Hub.

``huggingface_hub.snapshot_download`` does the work: it resumes interrupted downloads, skips files
already complete, and reads ``HF_TOKEN`` (or the stored ``hf auth login`` token) when no token is
given. This module adds the manifest (repository, revision, allow-patterns), a disk-space check,
a structure check afterwards, and turns the hub's exceptions into one ``WeightsError`` with a
message that says what to do.
"""

from __future__ import annotations

import errno
import shutil
from collections.abc import Callable
from pathlib import Path

from huggingface_hub import constants, get_token, snapshot_download
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    IncompleteSnapshotError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from core.errors import WeightsError
from weights.manifest import Manifest, ManifestEntry, load_manifest
from weights.verify import verify

Progress = Callable[[str], None]
TOKENS_URL = "https://huggingface.co/settings/tokens"


def download(
    dest: Path,
    *,
    token: str | None = None,
    include_lora: bool = True,
    progress: Progress | None = None,
    manifest: Manifest | None = None,
    endpoint: str | None = None,
) -> Path:
    """Download FLUX.2 [dev] (diffusers layout) and, optionally, the Turbo LoRA under ``dest``.

    Files land in ``dest / "FLUX.2-dev"`` and ``dest / "FLUX.2-dev-Turbo"``. Re-running resumes
    and skips what is complete.

    Args:
        dest: the download root; created if needed.
        token: a Hugging Face read token; None uses ``HF_TOKEN`` or the stored login.
        include_lora: also fetch ``fal/FLUX.2-dev-Turbo``.
        progress: called with one human-readable line per step.
        manifest: defaults to the packaged manifest.
        endpoint: the hub URL; None uses ``HF_ENDPOINT`` or huggingface.co.

    Returns:
        The pipeline folder, ``dest / "FLUX.2-dev"`` (what ``--model`` takes).

    Raises:
        WeightsError: offline or unreachable hub, gated repository without access, bad or
            missing token, unknown repository or revision, full disk, incomplete result.
    """
    manifest = manifest or load_manifest()
    report = progress or (lambda _message: None)
    dest = Path(dest)
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise WeightsError(f"cannot create the download folder {dest}: {error}") from error
    entries = [manifest.model, *([manifest.lora] if include_lora else [])]
    _check_disk_space(dest, entries)
    for entry in entries:
        local_dir = dest / entry.local_dir
        if not entry.revision_pinned:
            report(
                f"note: {entry.repo_id} revision {entry.revision!r} is a branch, not a pinned "
                "commit; pin the sha printed below in weights/manifest.json"
            )
        report(f"downloading {entry.repo_id}@{entry.revision} into {local_dir}")
        try:
            snapshot_download(
                entry.repo_id,
                revision=entry.revision,
                allow_patterns=list(entry.allow_patterns),
                local_dir=local_dir,
                token=token,
                endpoint=endpoint,
            )
        except Exception as error:
            raise _translate(error, entry, token=token, endpoint=endpoint) from error
        commit = _downloaded_commit(local_dir, entry)
        report(f"{entry.repo_id}: complete" + (f" at commit {commit}" if commit else ""))
    model_dir = manifest.model_dir(dest)
    _check_result(model_dir, manifest, include_lora)
    return model_dir


def _translate(
    error: Exception, entry: ManifestEntry, *, token: str | None, endpoint: str | None
) -> WeightsError:
    """One clear message per failure family; the hub's exception stays chained as the cause."""
    repo = entry.repo_id
    has_token = bool(token or get_token())
    if isinstance(error, GatedRepoError):
        if not has_token:
            return WeightsError(
                f"{repo} is gated and no Hugging Face token was found: accept its licence at "
                f"{entry.url} while logged in, then set HF_TOKEN to a read token of that "
                f"account ({TOKENS_URL})"
            )
        return WeightsError(
            f"{repo} is gated and this token's account has no access yet: accept the licence "
            f"at {entry.url} with the account the token belongs to (a fine-grained token also "
            "needs read access to public gated repositories), then run the download again"
        )
    if isinstance(error, RevisionNotFoundError):
        return WeightsError(
            f"revision {entry.revision!r} does not exist in {repo}: fix 'revision' for "
            f"{entry.name} in weights/manifest.json"
        )
    if isinstance(error, RepositoryNotFoundError):
        hint = (
            "check the repository id, or set HF_TOKEN if it is private or gated"
            if not has_token
            else "check the repository id and that the token's account can see it"
        )
        return WeightsError(f"{repo} was not found on the Hugging Face Hub: {hint}")
    if isinstance(error, HfHubHTTPError):
        status = error.response.status_code
        if status == 401:
            return WeightsError(
                f"the Hugging Face Hub rejected the token (401) while fetching {repo}: it is "
                f"invalid or expired; create a new read token at {TOKENS_URL} and set HF_TOKEN"
            )
        if status == 403:
            return WeightsError(
                f"access to {repo} was refused (403): the token lacks permission; accept the "
                f"licence at {entry.url} and use a token with read access"
            )
        if status == 429:
            return WeightsError(
                f"the Hugging Face Hub is rate-limiting downloads of {repo} (429): wait and run "
                "the download again; it resumes where it stopped"
            )
        return WeightsError(
            f"the Hugging Face Hub answered HTTP {status} while fetching {repo}: try again "
            "later; the download resumes where it stopped"
        )
    if isinstance(error, IncompleteSnapshotError):
        return WeightsError(
            f"cannot reach the Hugging Face Hub and the local copy of {repo} is incomplete: "
            "run the download again with network access; it resumes where it stopped"
        )
    if isinstance(error, (LocalEntryNotFoundError, OfflineModeIsEnabled, ConnectionError)) or (
        type(error).__module__.split(".")[0] in ("httpx", "httpx2", "httpcore", "httpcore2")
    ):
        if constants.is_offline_mode():
            return WeightsError(
                f"cannot download {repo}: HF_HUB_OFFLINE is set, so the Hugging Face Hub is "
                "not contacted; unset HF_HUB_OFFLINE (and TRANSFORMERS_OFFLINE) to download"
            )
        where = endpoint or constants.ENDPOINT
        cause = error.__cause__ or error.__context__ or error
        return WeightsError(
            f"cannot reach the Hugging Face Hub at {where} to download {repo}: check the "
            f"network connection, proxy settings and HF_ENDPOINT "
            f"({type(cause).__name__}: {_first_line(cause)})"
        )
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        return WeightsError(f"the disk filled up while downloading {repo}: free space and re-run")
    if isinstance(error, OSError):
        return WeightsError(f"cannot write the files of {repo}: {error}")
    return WeightsError(f"downloading {repo} failed: {type(error).__name__}: {_first_line(error)}")


def _check_disk_space(dest: Path, entries: list[ManifestEntry]) -> None:
    needed = 0
    for entry in entries:
        if entry.approx_total_bytes is None:
            continue
        present = _bytes_under(dest / entry.local_dir)
        needed += max(0, entry.approx_total_bytes - present)
    free = shutil.disk_usage(dest).free
    if needed > free:
        raise WeightsError(
            f"not enough disk space in {dest}: about {needed / 1e9:.1f} GB still to download, "
            f"{free / 1e9:.1f} GB free"
        )


def _check_result(model_dir: Path, manifest: Manifest, include_lora: bool) -> None:
    """snapshot_download returns an existing local folder as-is when the hub is unreachable."""
    result = verify(model_dir, manifest, check_sha256=False)
    if not result.ok:
        raise WeightsError(
            "the download finished but the checkpoint is incomplete or damaged (if the hub "
            "could not be reached, what was already on disk was kept); run the download "
            "again:\n" + result.render()
        )
    if include_lora and not manifest.lora_file(model_dir.parent).is_file():
        raise WeightsError(
            f"the LoRA file {manifest.lora.weight_file} was not found in {manifest.lora.repo_id}"
        )


def _downloaded_commit(local_dir: Path, entry: ManifestEntry) -> str | None:
    """The commit sha snapshot_download recorded for a file (private helper; best effort)."""
    try:
        from huggingface_hub._local_folder import read_download_metadata
    except ImportError:  # pragma: no cover - moved in another huggingface_hub version
        return None
    name = entry.weight_file or "model_index.json"
    try:
        metadata = read_download_metadata(local_dir, name)
    except (OSError, ValueError):
        return None
    return metadata.commit_hash if metadata is not None else None


def _bytes_under(folder: Path) -> int:
    if not folder.is_dir():
        return 0
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else ""
