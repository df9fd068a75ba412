"""Per-request LoRAs: a path (URL, LoRA directory name, Hugging Face cache entry) becomes a
checked local safetensors file, or fal's 422 at ["body", "loras", i, "path"]."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from core.errors import InvalidRequest
from pipelines.fake import FakeEngine
from service.inputs import FetchPolicy
from service.lora_cache import LoraFileCache
from service.loras import LoraPolicy, LoraResolver
from tests.helpers.loras import file_server, write_hf_cache, write_lora, write_pickle

LOOPBACK = FetchPolicy.from_text("127.0.0.1")


def resolver(tmp_path: Path, **policy: object) -> LoraResolver:
    engine = FakeEngine()
    options = {
        "directory": tmp_path / "loras",
        "cache_dir": tmp_path / "cache",
        "fetch": LOOPBACK,
        "hf_cache": tmp_path / "hf",
        **policy,
    }
    return LoraResolver(LoraPolicy(**options), engine=lambda: engine)  # type: ignore[arg-type]


def refusal(call: object) -> tuple[list[str | int], str, str]:
    with pytest.raises(InvalidRequest) as caught:
        call()  # type: ignore[operator]
    problem = caught.value.problems[0]
    return list(problem.loc), problem.type, problem.msg


def test_a_url_is_downloaded_once_and_named_by_its_hash(tmp_path: Path) -> None:
    data = write_lora(tmp_path / "style.safetensors").read_bytes()
    loras = resolver(tmp_path)
    with file_server({"/style.safetensors": data}) as (origin, asked):
        first = loras.resolve(f"{origin}/style.safetensors", 0.7, index=0)
        again = loras.resolve(f"{origin}/style.safetensors", 1.0, index=1)
    assert asked == ["/style.safetensors"]  # the second came from the cache
    assert first.name == again.name == hashlib.sha256(data).hexdigest()
    assert first.path == again.path and first.path.read_bytes() == data
    assert first.path.parent == tmp_path / "cache"
    assert (first.scale, again.scale) == (0.7, 1.0)
    stats = loras.stats()
    assert stats is not None and (stats.hits, stats.misses, stats.entries) == (1, 1, 1)


def test_urls_go_through_the_ssrf_guard_and_limits(tmp_path: Path) -> None:
    data = write_lora(tmp_path / "style.safetensors").read_bytes()
    files = {
        "/style.safetensors": data,
        "/model.bin": write_pickle(tmp_path / "m.bin").read_bytes(),
    }
    with file_server(files) as (origin, asked):
        guarded = resolver(tmp_path / "a", fetch=FetchPolicy())
        loc, kind, msg = refusal(lambda: guarded.resolve(f"{origin}/style.safetensors", 1, index=2))
        assert (loc, kind) == (["body", "loras", 2, "path"], "file_download_error")
        assert asked == []  # loopback is refused before any request
        small = resolver(tmp_path / "b", fetch=FetchPolicy.from_text("127.0.0.1", max_bytes=64))
        loc, kind, msg = refusal(lambda: small.resolve(f"{origin}/style.safetensors", 1, index=0))
        assert (loc, kind) == (["body", "loras", 0, "path"], "file_download_error")
        assert "larger than 64 bytes" in msg
        loras = resolver(tmp_path / "c")
        loc, kind, msg = refusal(lambda: loras.resolve(f"{origin}/missing", 1, index=1))
        assert (loc, kind, msg) == (["body", "loras", 1, "path"], "file_download_error",
                                    "File download error: HTTP 404")  # fmt: skip
        loc, kind, msg = refusal(lambda: loras.resolve(f"{origin}/model.bin", 1, index=0))
        assert (loc, kind) == (["body", "loras", 0, "path"], "lora_load_error")
        assert "pickled checkpoint" in msg
    assert not list((tmp_path / "c" / "cache").glob("*.safetensors"))  # nothing unusable kept


def test_names_come_from_the_lora_directory_only(tmp_path: Path) -> None:
    write_lora(tmp_path / "loras" / "brand.safetensors", seed=1)
    outside = write_lora(tmp_path / "secret.safetensors", seed=2)
    (tmp_path / "loras" / "escape.safetensors").symlink_to(outside)
    loras = resolver(tmp_path)
    assert loras.resolve("brand", 1, index=0).path == tmp_path / "loras" / "brand.safetensors"
    assert (
        loras.resolve("brand.safetensors", 1, index=0).name
        == loras.resolve("brand", 1, index=0).name
    )
    for hostile in ("escape", "../secret", "..", ".hidden", "brand;rm", "missing"):
        loc, kind, _ = refusal(lambda h=hostile: loras.resolve(h, 1, index=1))  # type: ignore[misc]
        assert (loc, kind) == (["body", "loras", 1, "path"], "file_download_error"), hostile
    no_directory = resolver(tmp_path, directory=None)
    _, _, msg = refusal(lambda: no_directory.resolve("brand", 1, index=0))
    assert "FLUX2_LORA_DIR" in msg


def test_repo_ids_come_from_the_local_hugging_face_cache_only(tmp_path: Path) -> None:
    lora = write_lora(tmp_path / "a.safetensors", seed=3).read_bytes()
    other = write_lora(tmp_path / "b.safetensors", seed=4).read_bytes()
    hf = tmp_path / "hf"
    write_hf_cache(hf, "acme/style", {"pytorch_lora_weights.safetensors": lora, "x.json": b"{}"})
    write_hf_cache(hf, "acme/two", {"one.safetensors": lora, "sub/two.safetensors": other})
    loras = resolver(tmp_path)
    found = loras.resolve("acme/style", 0.5, index=0)
    assert found.path.read_bytes() == lora and found.name == hashlib.sha256(lora).hexdigest()
    assert loras.resolve("acme/two/sub/two.safetensors", 1, index=0).path.read_bytes() == other
    _, kind, msg = refusal(lambda: loras.resolve("acme/two", 1, index=2))
    assert kind == "lora_load_error" and "acme/two/<file>.safetensors" in msg
    loc, kind, msg = refusal(lambda: loras.resolve("acme/absent", 1, index=1))
    assert (loc, kind) == (["body", "loras", 1, "path"], "file_download_error")
    assert "never downloads from the Hub" in msg
    _, kind, _ = refusal(lambda: loras.resolve("acme/style/model.bin", 1, index=0))
    assert kind == "lora_load_error"
    _, kind, _ = refusal(lambda: loras.resolve("acme/style/../../x.safetensors", 1, index=0))
    assert kind == "file_download_error"


def test_the_engine_checks_every_file(tmp_path: Path) -> None:
    write_lora(tmp_path / "loras" / "weights.safetensors", keys=("blocks.0.weight", "b.bias"))
    (tmp_path / "loras" / "junk.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}")
    engine = FakeEngine()
    policy = LoraPolicy(directory=tmp_path / "loras", cache_dir=tmp_path / "cache")
    loras = LoraResolver(policy, engine=lambda: engine)
    for _ in range(2):
        loc, kind, msg = refusal(lambda: loras.resolve("weights", 1, index=2))
        assert (loc, kind) == (["body", "loras", 2, "path"], "lora_load_error")
        assert "does not fit this model" in msg
    assert len(engine.checked_loras) == 1  # the verdict is remembered by content hash
    _, kind, msg = refusal(lambda: loras.resolve("junk", 1, index=0))
    assert kind == "lora_load_error" and "not a safetensors file" in msg


def test_the_download_cache_is_bounded_least_recently_used_first(tmp_path: Path) -> None:
    clock = [1000.0]
    cache = LoraFileCache(tmp_path, max_bytes=250, pin_seconds=10, clock=lambda: clock[0])

    def add(source: str, size: int) -> Path:
        clock[0] += 60
        return cache.store(source, lambda write: write(source.encode().ljust(size, b"\0")))

    first, second = add("a", 100), add("b", 100)
    assert cache.lookup("a") is not None  # a is now the most recently used
    clock[0] += 60
    third = add("c", 100)
    assert first.is_file() and third.is_file() and not second.is_file()
    assert cache.lookup("b") is None
    assert cache.stats().bytes == 200
    reopened = LoraFileCache(tmp_path, max_bytes=250)
    assert reopened.stats().entries == 2
    cache.pin_seconds = 1000  # files used this recently may still be waiting for the GPU
    kept = [add(name, 100) for name in ("d", "e")]
    assert all(path.is_file() for path in kept) and cache.stats().bytes == 400
