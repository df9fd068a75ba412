"""Per-request LoRAs: a request's ``loras[i].path`` becomes a local safetensors file.

Runs in the worker's preparation stage (prepare threads, never the GPU thread), like reference
fetching. ``path`` is one of:

* **an http(s) URL**: downloaded through the same SSRF-guarded fetcher as ``image_urls``
  (:func:`service.inputs.fetch_to`), at most ``FLUX2_LORA_MAX_MB``, with
  ``FLUX2_LORA_TIMEOUT_SECONDS``; kept on disk by content hash (:mod:`service.lora_cache`,
  bounded by ``FLUX2_LORA_CACHE_MB``), so the next request for the same URL does not download it;
* **a name** from the operator's directory ``FLUX2_LORA_DIR``: ``my-style`` or
  ``my-style.safetensors`` (letters, digits, ``.``, ``_``, ``-``; no ``/``: no way out of the
  directory, and a symlink that leads out is refused too);
* **a Hugging Face repo id**, ``owner/repo`` or ``owner/repo/path/in/repo.safetensors``, looked up
  in the local Hugging Face cache only (``FLUX2_LORA_HF_CACHE``, else huggingface_hub's default):
  nothing is ever downloaded from the Hub. Without a file name the repo's
  ``pytorch_lora_weights.safetensors`` (diffusers' name) is used, or its only ``.safetensors``.

Only safetensors are accepted (the 8-byte header length and the JSON header are checked before
the engine sees the file); pickled checkpoints (``.bin``, ``.pt``, ``.ckpt``) never are. The
engine then checks that the tensors fit its model (``EditEngine.check_lora``). Every failure is
fal's 422 at ``["body", "loras", i, "path"]`` and ends only that job.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from core.errors import FileDownloadError, Flux2Error, InvalidRequest
from pipelines.types import LoraWeights
from service.inputs import FetchPolicy, fetch_to
from service.lora_cache import FileCacheStats, LoraFileCache

if TYPE_CHECKING:
    from pipelines.protocol import EditEngine
    from service.settings import Settings

#: An operator directory name: one path segment, no hidden files.
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
#: ``owner/repo`` with an optional file inside the repo.
HF_ID = re.compile(
    r"(?P<repo>[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95})"
    r"(?:/(?P<file>[A-Za-z0-9_.\-/]{1,255}))?"
)
#: The file diffusers saves a LoRA as (used for a repo id that names no file).
DIFFUSERS_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
#: Largest safetensors header read (the JSON list of tensors).
MAX_HEADER_BYTES = 64 * 1024 * 1024
#: Engine verdicts kept per file (content hash).
CHECKED_FILES = 256
_PICKLE_SIGNATURES = (b"PK\x03\x04", b"\x80")  # torch zip checkpoints, raw pickles


def _loc(index: int) -> tuple[str | int, ...]:
    return ("body", "loras", index, "path")


class LoraLoadError(InvalidRequest):
    code = "lora_load_error"


@dataclass(frozen=True)
class LoraPolicy:
    """Where LoRA paths resolve and the limits of a download.

    Args:
        directory: the operator's LoRA directory (None: names are refused).
        cache_dir: where downloaded files are kept.
        cache_bytes: the bound of that cache.
        max_bytes: the largest LoRA file accepted (downloaded or local).
        fetch: the SSRF guard and timeouts of downloads (its ``max_bytes`` is set from
            ``max_bytes``).
        hf_cache: the Hugging Face cache (None: huggingface_hub's default).
    """

    directory: Path | None
    cache_dir: Path
    cache_bytes: int = 4096 * 1024 * 1024
    max_bytes: int = 1024 * 1024 * 1024
    fetch: FetchPolicy = FetchPolicy()
    hf_cache: Path | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> LoraPolicy:
        loras = settings.loras
        fetch = replace(
            FetchPolicy.from_settings(settings.fetch),
            max_bytes=loras.lora_max_mb * 1024 * 1024,
            read_timeout=loras.lora_timeout_seconds,
        )
        return cls(
            directory=loras.lora_dir,
            cache_dir=loras.lora_cache_dir or settings.storage.cache_dir / "loras",
            cache_bytes=loras.lora_cache_mb * 1024 * 1024,
            max_bytes=loras.lora_max_mb * 1024 * 1024,
            fetch=fetch,
            hf_cache=loras.lora_hf_cache,
        )


class LoraResolver:
    """Resolves and checks a request's LoRAs; see the module docstring.

    ``engine`` gives the loaded engine (None before it loaded); its ``check_lora`` verdict on a
    file is remembered by content hash.
    """

    def __init__(
        self, policy: LoraPolicy, engine: Callable[[], EditEngine | None] | None = None
    ) -> None:
        self.policy = policy
        self.engine = engine
        self._cache: LoraFileCache | None = None
        self._cache_lock = threading.Lock()
        self._hashes: dict[tuple[str, int, int], str] = {}  # (path, size, mtime) -> sha256
        self._checked: dict[str, InvalidRequest | None] = {}
        self._lock = threading.Lock()

    @property
    def cache(self) -> LoraFileCache:
        """The download cache (its directory is made on first use)."""
        with self._cache_lock:
            if self._cache is None:
                self._cache = LoraFileCache(self.policy.cache_dir, self.policy.cache_bytes)
            return self._cache

    def stats(self) -> FileCacheStats | None:
        """The download cache's counters (None before any download was looked up)."""
        return self._cache.stats() if self._cache is not None else None

    def resolve(self, path: str, scale: float, *, index: int) -> LoraWeights:
        """The LoRA ``path`` names, checked, as the engine takes it. Raises fal's 422 at
        ``["body", "loras", index, "path"]``."""
        try:
            local, digest = self._locate(path.strip(), index)
            _check_safetensors(local, index=index, source=path)
            self._check_with_engine(local, digest, index=index, source=path)
        except InvalidRequest as exc:
            if path.startswith(("http://", "https://")) and not isinstance(exc, FileDownloadError):
                self.cache.forget(path.strip())
            raise
        return LoraWeights(name=digest, path=local, scale=scale)

    # -- the three kinds of path ---------------------------------------------------------------

    def _locate(self, path: str, index: int) -> tuple[Path, str]:
        if path.startswith(("http://", "https://")):
            return self._download(path, index)
        if "://" in path or path.startswith("data:"):
            raise FileDownloadError(
                "File download error: a LoRA path must be an http(s) URL, a LoRA name or a "
                "Hugging Face repo id",
                loc=_loc(index),
                input=path,
            )
        if "/" not in path:
            return self._named(path, index)
        return self._from_hub(path, index)

    def _download(self, url: str, index: int) -> tuple[Path, str]:
        cached = self.cache.lookup(url)
        if cached is not None:
            digest, local = cached
            return local, digest
        local = self.cache.store(
            url, lambda write: fetch_to(url, write, loc=_loc(index), policy=self.policy.fetch)
        )
        return local, local.name.removesuffix(".safetensors")

    def _named(self, name: str, index: int) -> tuple[Path, str]:
        directory = self.policy.directory
        if directory is None:
            raise FileDownloadError(
                f"LoRA {name!r} is not a URL or a Hugging Face repo id, and this server has no "
                "LoRA directory (FLUX2_LORA_DIR)",
                loc=_loc(index),
                input=name,
            )
        if not NAME.fullmatch(name):
            raise FileDownloadError(
                "A LoRA name may hold only letters, digits, '.', '_' and '-'",
                loc=_loc(index),
                input=name,
            )
        root = directory.resolve()
        for candidate in (name, f"{name}.safetensors"):
            local = (root / candidate).resolve()
            if local.is_file() and local.is_relative_to(root):
                return local, self._hash(local, index)
        raise FileDownloadError(
            f"No LoRA named {name!r} in the server's LoRA directory", loc=_loc(index), input=name
        )

    def _from_hub(self, path: str, index: int) -> tuple[Path, str]:
        match = HF_ID.fullmatch(path)
        if match is None or ".." in path.split("/"):
            raise FileDownloadError(
                "A LoRA path must be an http(s) URL, a LoRA name, or a Hugging Face repo id "
                "(owner/repo or owner/repo/file.safetensors)",
                loc=_loc(index),
                input=path,
            )
        repo, filename = match.group("repo"), match.group("file")
        local = self._hub_file(repo, filename, index, path)
        return local, self._hash(local, index)

    def _hub_file(self, repo: str, filename: str | None, index: int, source: str) -> Path:
        """The file from the local Hugging Face cache (never the network)."""
        from huggingface_hub import snapshot_download, try_to_load_from_cache
        from huggingface_hub.errors import LocalEntryNotFoundError

        cache_dir = self.policy.hf_cache
        if filename is not None:
            if not filename.endswith(".safetensors"):
                raise LoraLoadError(
                    "Only safetensors LoRA files are accepted (never pickled .bin/.pt/.ckpt)",
                    loc=_loc(index),
                    input=source,
                )
            found = try_to_load_from_cache(repo, filename, cache_dir=cache_dir)
            if isinstance(found, str):
                return Path(found)
            raise self._not_cached(repo, index, source, f" (file {filename})")
        try:
            snapshot = Path(
                snapshot_download(
                    repo,
                    cache_dir=cache_dir,
                    local_files_only=True,
                    allow_patterns=["*.safetensors"],
                )
            )
        except (LocalEntryNotFoundError, OSError, ValueError):
            raise self._not_cached(repo, index, source, "") from None
        preferred = snapshot / DIFFUSERS_WEIGHT_NAME
        if preferred.is_file():
            return preferred
        files = sorted(p for p in snapshot.rglob("*.safetensors") if p.is_file())
        if len(files) == 1:
            return files[0]
        names = ", ".join(str(p.relative_to(snapshot)) for p in files[:5]) or "none"
        raise LoraLoadError(
            f"{repo} holds {len(files)} safetensors files ({names}): name one as "
            f"{repo}/<file>.safetensors",
            loc=_loc(index),
            input=source,
        )

    def _not_cached(self, repo: str, index: int, source: str, what: str) -> FileDownloadError:
        return FileDownloadError(
            f"LoRA {repo}{what} is not in this server's Hugging Face cache (the server never "
            "downloads from the Hub: the operator fetches it with `hf download`)",
            loc=_loc(index),
            input=source,
        )

    # -- checks ---------------------------------------------------------------------------------

    def _hash(self, local: Path, index: int) -> str:
        try:
            stat = local.stat()
        except OSError as exc:
            raise FileDownloadError(
                f"Cannot read the LoRA: {exc.strerror}", loc=_loc(index)
            ) from None
        if stat.st_size > self.policy.max_bytes:
            raise FileDownloadError(
                f"The LoRA is larger than {self.policy.max_bytes} bytes",
                loc=_loc(index),
                ctx={"max_size": self.policy.max_bytes},
            )
        key = (str(local), stat.st_size, stat.st_mtime_ns)
        with self._lock:
            known = self._hashes.get(key)
        if known is not None:
            return known
        digest = hashlib.sha256()
        with local.open("rb") as source:
            for chunk in iter(lambda: source.read(1024 * 1024), b""):
                digest.update(chunk)
        with self._lock:
            self._hashes[key] = digest.hexdigest()
        return digest.hexdigest()

    def _check_with_engine(self, local: Path, digest: str, *, index: int, source: str) -> None:
        engine = self.engine() if self.engine is not None else None
        if engine is None:
            return
        with self._lock:
            seen = digest in self._checked
            verdict = self._checked.get(digest)
        if not seen:
            try:
                engine.check_lora(LoraWeights(name=digest, path=local))
            except InvalidRequest as exc:
                verdict = exc
            except Flux2Error as exc:  # e.g. unreadable: say so at the path, do not remember
                raise LoraLoadError(exc.message, loc=_loc(index), input=source) from exc
            with self._lock:
                if len(self._checked) >= CHECKED_FILES:
                    self._checked.pop(next(iter(self._checked)))
                self._checked[digest] = verdict
        if verdict is not None:
            problem = verdict.problems[0]
            raise LoraLoadError(
                f"The LoRA does not fit this model: {problem.msg}",
                loc=_loc(index),
                type=problem.type if problem.type != "value_error" else None,
                input=source,
            )


def _check_safetensors(local: Path, *, index: int, source: str) -> None:
    """Refuse anything but a well-formed safetensors file (pickles above all)."""

    def refuse(reason: str) -> LoraLoadError:
        return LoraLoadError(
            f"The LoRA is not a safetensors file: {reason}", loc=_loc(index), input=source
        )

    try:
        with local.open("rb") as file:
            head = file.read(8)
            size = local.stat().st_size
            if head.startswith(_PICKLE_SIGNATURES):
                raise refuse("it is a pickled checkpoint (.bin/.pt/.ckpt), which is never loaded")
            if len(head) < 8:
                raise refuse("too short")
            (length,) = struct.unpack("<Q", head)
            if not 2 <= length <= min(MAX_HEADER_BYTES, size - 8):
                raise refuse("bad header length")
            header = json.loads(file.read(length))
    except OSError as exc:
        raise LoraLoadError(f"Cannot read the LoRA: {exc.strerror}", loc=_loc(index)) from None
    except (ValueError, UnicodeDecodeError):
        raise refuse("the header is not JSON") from None
    if not isinstance(header, dict):
        raise refuse("the header is not a JSON object")
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    if not tensors or not all(
        isinstance(v, dict) and {"dtype", "shape", "data_offsets"} <= v.keys()
        for v in tensors.values()
    ):
        raise refuse("the header lists no tensors")
