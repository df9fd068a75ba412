"""Uploads: local files sent with fal's storage protocol, kept for use in ``image_urls``.

The official clients turn local files into URLs before a request (docs/reference/fal-protocol.md
§10); this module is what the storage routes (:mod:`service.routes.storage`) and the worker's
preparation share. No HTTP framework here: the worker reads uploads too.

**Two ways in.**

* *Signed upload URLs* (the JS client, and Python's ``gcs`` fallback): ``initiate`` answers an
  ``upload_url`` that carries its own proof, an HMAC token in its query (the JS client sends the
  PUT with no key), naming the upload id, its owner and an expiry.
* *Upload tokens* (Python's default ``fal_v3`` repository): ``storage/auth/token`` answers a token
  naming the owner and an expiry, sent back as ``Authorization: Bearer <token>`` with each upload.

Both are signed with :class:`UploadSigner` (HMAC-SHA256 under ``FLUX2_UPLOAD_SECRET``, or a
random per-process key when that is unset) and live :data:`URL_SECONDS`.

**Storage.** Uploads live in an :class:`~service.storage.base.ArtifactStore` of their own (Redis
when the queue is on Redis, so any API node and worker reads them; local disk otherwise), with a
TTL (``FLUX2_UPLOAD_TTL_SECONDS``). The key names the owner: folder = the upload id (32 random hex
digits), name = the owner's key fingerprint (``anonymous`` without keys), so reading an upload
with another owner simply finds nothing. Parts of a multipart upload wait in ``<id>.parts``.

**Use.** An upload's URL is ``<server>/uploads/<id>``. The worker recognises the server's own
upload URLs (same origin as the job's) and reads them from the store, for the job's owner only;
every other URL is fetched through the SSRF guard as before, so loopback stays refused.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
import time
from dataclasses import dataclass

from core.errors import Flux2Error, InvalidRequest, NotFound, Unauthorized
from service.inputs import sniff_image
from service.storage.base import Artifact, ArtifactStore

#: Signed upload URLs and upload tokens are valid this long (seconds).
URL_SECONDS = 900
#: The path under which the server serves uploads (``/uploads/<id>``).
UPLOADS_PATH = "/uploads"
#: The owner tag of uploads made without API keys.
ANONYMOUS = "anonymous"
#: Parts of one multipart upload: at most this many, each at most this big (the clients send
#: 10 MB parts), so a multipart upload cannot hold much more than the upload cap.
MAX_PART_BYTES = 16 * 1024 * 1024
MIN_PART_BYTES = 5 * 1024 * 1024

_ID = re.compile(r"^[0-9a-f]{32}$")


class Kind:
    """What a signed token allows."""

    PUT = "put"  # one upload id: PUT the bytes (and multipart parts) to the signed URL
    CDN = "cdn"  # any number of uploads by the owner (fal_v3: POST files/upload)


@dataclass(frozen=True)
class Grant:
    """What a valid token says: who may upload, until when, and (``put``) which upload."""

    kind: str
    owner: str | None
    expires: float
    upload_id: str = ""


class UploadTooLarge(Flux2Error):
    """An upload (or part) over the size cap: answered 413, as a body over the limit is."""

    code = "request_too_large"
    http_status = 413

    def __init__(self, limit: int) -> None:
        super().__init__(f"Upload is larger than {limit} bytes")
        self.limit = limit


class UploadSigner:
    """Signs and checks upload tokens with HMAC-SHA256 (see the module docstring)."""

    def __init__(self, secret: bytes) -> None:
        self._key = hashlib.sha256(b"flux2-edit uploads\0" + secret).digest()

    @classmethod
    def from_setting(cls, secret: str | None) -> UploadSigner:
        """The signer of ``FLUX2_UPLOAD_SECRET``; a random key when it is unset."""
        return cls(secret.encode() if secret else secrets.token_bytes(32))

    def sign(
        self, kind: str, owner: str | None, upload_id: str = "", *, expires: float | None = None
    ) -> tuple[str, float]:
        """A token for ``kind`` (and ``upload_id``) by ``owner``; returns it and its expiry."""
        expires = float(int(expires if expires is not None else time.time() + URL_SECONDS))
        claims = {"k": kind, "o": owner, "u": upload_id, "e": int(expires)}
        payload = _b64(json.dumps(claims, separators=(",", ":")).encode())
        return f"{payload}.{_b64(self._mac(payload))}", expires

    def verify(self, token: str | None, kind: str, upload_id: str = "") -> Grant:
        """The grant ``token`` carries. Raises Unauthorized when it is missing, forged, for
        another kind or upload, or expired."""
        payload, _, mac = (token or "").partition(".")
        try:
            good = hmac.compare_digest(_unb64(mac), self._mac(payload))
            claims = json.loads(_unb64(payload)) if good else None
        except (ValueError, TypeError):
            claims = None
        if not isinstance(claims, dict):
            raise Unauthorized("Invalid upload token")
        owner = claims.get("o")
        grant = Grant(
            kind=str(claims.get("k")),
            owner=owner if isinstance(owner, str) else None,
            expires=float(claims.get("e") or 0),
            upload_id=str(claims.get("u") or ""),
        )
        if grant.kind != kind or (upload_id and grant.upload_id != upload_id):
            raise Unauthorized("This upload token is not valid for this request")
        if time.time() >= grant.expires:
            raise Unauthorized("This upload URL has expired; start the upload again")
        return grant

    def _mac(self, payload: str) -> bytes:
        return hmac.new(self._key, payload.encode(), hashlib.sha256).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def owner_tag(owner: str | None) -> str:
    """The store name of an owner: its key fingerprint, or ``anonymous``."""
    return owner or ANONYMOUS


def new_upload_id() -> str:
    return secrets.token_hex(16)


def check_upload_id(upload_id: str) -> str:
    """``upload_id`` if it has the form of one; NotFound otherwise."""
    if not _ID.match(upload_id):
        raise NotFound(f"Upload {upload_id[:40]} not found")
    return upload_id


def file_url(base_url: str, upload_id: str) -> str:
    """The URL an upload is used (and read back) by."""
    return f"{base_url}{UPLOADS_PATH}/{upload_id}"


def upload_id_of(url: str, base_url: str) -> str | None:
    """The upload id when ``url`` is one of this server's upload URLs (same origin as
    ``base_url``, the job's), else None."""
    prefix = f"{base_url.rstrip('/')}{UPLOADS_PATH}/"
    if not url.startswith(prefix):
        return None
    rest = url[len(prefix) :]
    return rest if _ID.match(rest) else None


@dataclass(frozen=True)
class StoredUpload:
    upload_id: str
    content_type: str
    size: int


class Uploads:
    """Uploads in ``store`` (see the module docstring), each at most ``max_bytes``."""

    def __init__(self, store: ArtifactStore, *, max_bytes: int = 50 * 1024 * 1024) -> None:
        self.store = store
        self.max_bytes = max_bytes

    @property
    def max_part_bytes(self) -> int:
        return min(self.max_bytes, MAX_PART_BYTES)

    @property
    def max_parts(self) -> int:
        return max(1, -(-self.max_bytes // MIN_PART_BYTES)) + 1

    def save(self, upload_id: str, owner: str | None, data: bytes) -> StoredUpload:
        """Store a whole upload. Raises UploadTooLarge, or the image errors of
        :func:`service.inputs.sniff_image` for anything but a PNG, JPEG, WebP or GIF image."""
        check_upload_id(upload_id)
        if len(data) > self.max_bytes:
            raise UploadTooLarge(self.max_bytes)
        content_type = sniff_image(data, loc=("body",))
        self.store.put(upload_id, owner_tag(owner), data, content_type)
        return StoredUpload(upload_id, content_type, len(data))

    def read(self, upload_id: str, owner: str | None) -> Artifact:
        """An upload of ``owner``; NotFound when it does not exist, expired, or is another's."""
        artifact = self.store.open(f"{check_upload_id(upload_id)}/{owner_tag(owner)}")
        if artifact.content_type.startswith("image/"):
            return artifact
        # a store that keeps no content type (local disk): the bytes say it (they were sniffed)
        return Artifact(artifact.data, sniff_image(artifact.data, loc=("body",)))

    # -- multipart -------------------------------------------------------------------------

    def begin_parts(self, upload_id: str, owner: str | None) -> None:
        """Open a multipart upload (parts are accepted only for an opened one)."""
        self.store.put(self._parts(upload_id), self._part(owner, 0), b"", "text/plain")

    def save_part(self, upload_id: str, owner: str | None, number: int, data: bytes) -> str:
        """Store part ``number`` (1, 2, …); returns its ETag."""
        if not 1 <= number <= self.max_parts:
            raise InvalidRequest(
                f"part number must be between 1 and {self.max_parts}",
                loc=("path", "part"),
                input=number,
            )
        if len(data) > self.max_part_bytes:
            raise UploadTooLarge(self.max_part_bytes)
        self.store.open(f"{self._parts(upload_id)}/{self._part(owner, 0)}")  # NotFound: not begun
        self.store.put(self._parts(upload_id), self._part(owner, number), data, "text/plain")
        return etag(data)

    def complete(
        self, upload_id: str, owner: str | None, parts: list[tuple[int, str]]
    ) -> StoredUpload:
        """Join ``parts`` (number, ETag), in order, into the upload."""
        if not parts:
            raise InvalidRequest("a multipart upload needs a part", loc=("body", "parts"))
        chunks, total = [], 0
        for i, (number, tag) in enumerate(sorted(parts)):
            if not 1 <= number <= self.max_parts:
                raise InvalidRequest("unknown part", loc=("body", "parts", i), input=number)
            try:
                chunk = self.store.open(f"{self._parts(upload_id)}/{self._part(owner, number)}")
            except NotFound:
                raise InvalidRequest(
                    f"part {number} was not uploaded", loc=("body", "parts", i), input=number
                ) from None
            if tag.strip('"') != etag(chunk.data):
                raise InvalidRequest(
                    f"part {number} has another ETag", loc=("body", "parts", i), input=tag
                )
            total += len(chunk.data)
            if total > self.max_bytes:
                raise UploadTooLarge(self.max_bytes)
            chunks.append(chunk.data)
        stored = self.save(upload_id, owner, b"".join(chunks))
        self.store.delete(self._parts(upload_id))
        return stored

    @staticmethod
    def _parts(upload_id: str) -> str:
        return f"{check_upload_id(upload_id)}.parts"

    @staticmethod
    def _part(owner: str | None, number: int) -> str:
        return f"{owner_tag(owner)}-{number}"


def etag(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:32]
