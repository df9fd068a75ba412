"""Output files in Redis, so that any API node can serve what any worker stored.

Keys (``P`` = ``key_prefix``): ``P file:{owner}/{name}`` is a hash with the bytes (``data``) and
the content type (``type``); ``P files:{owner}`` is the set of an owner's names, so ``delete``
finds them all. Both expire ``ttl`` seconds after the last ``put`` for the owner.
"""

from __future__ import annotations

from core.errors import NotFound
from service.redis_client import connect, redis_errors
from service.storage.base import Artifact
from service.storage.local import checked_segment  # the same name rules as on disk

# KEYS[1]: the owner's set. ARGV[1]: the prefix of file keys ("P file:{owner}/").
_DELETE = """
local names = redis.call('SMEMBERS', KEYS[1])
for _, name in ipairs(names) do redis.call('DEL', ARGV[1] .. name) end
redis.call('DEL', KEYS[1])
return #names
"""


class RedisArtifactStore:
    """Implements :class:`service.storage.base.ArtifactStore` in Redis, with a TTL."""

    def __init__(self, url: str, *, ttl: float = 3600, key_prefix: str = "flux2:") -> None:
        self.ttl = ttl
        self.prefix = key_prefix
        with redis_errors("connect"):
            self._redis = connect(url, decode_responses=False)
            self._delete = self._redis.register_script(_DELETE)

    def put(self, owner: str, name: str, data: bytes, content_type: str) -> str:
        checked_segment(owner, missing=True)
        checked_segment(name)
        ttl_ms = max(1, int(self.ttl * 1000))
        with redis_errors(f"storing {owner}/{name}"), self._redis.pipeline() as pipe:
            pipe.hset(self._file(owner, name), mapping={"data": data, "type": content_type})
            pipe.pexpire(self._file(owner, name), ttl_ms)
            pipe.sadd(self._names(owner), name)
            pipe.pexpire(self._names(owner), ttl_ms)
            pipe.execute()
        return f"{owner}/{name}"

    def open(self, key: str) -> Artifact:
        owner, _, name = key.partition("/")
        checked_segment(owner, missing=True)
        checked_segment(name, missing=True)
        with redis_errors(f"reading {key}"):
            data, content_type = self._redis.hmget(self._file(owner, name), ["data", "type"])
        if not isinstance(data, bytes):
            raise NotFound(f"File {key} not found")
        if isinstance(content_type, bytes):
            content_type = content_type.decode()
        return Artifact(data=data, content_type=content_type or "application/octet-stream")

    def delete(self, owner: str) -> None:
        checked_segment(owner, missing=True)
        with redis_errors(f"deleting the files of {owner}"):
            self._delete(keys=[self._names(owner)], args=[f"{self.prefix}file:{owner}/"])

    def close(self) -> None:
        self._redis.close()

    def _file(self, owner: str, name: str) -> str:
        return f"{self.prefix}file:{owner}/{name}"

    def _names(self, owner: str) -> str:
        return f"{self.prefix}files:{owner}"
