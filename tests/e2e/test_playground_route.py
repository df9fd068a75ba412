"""``GET /`` and its assets, without a browser: served, public, self-contained, schema-true.

The page reads defaults and ranges from /openapi.json at load; the values written into its HTML
are what it shows before that (or if it fails), so they must match the schema too.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from pipelines.sizes import PRESETS
from service.app import create_app
from service.queue.memory import InMemoryJobQueue
from service.schema import Flux2FlashEditInput, ImageSize
from service.settings import Settings
from service.storage.local import LocalArtifactStore

STATIC = Path(__file__).resolve().parents[2] / "service" / "static"


@pytest.fixture(params=["", "k1"], ids=["open", "keyed"])
def client(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TestClient]:
    """An API node (no worker), with and without API keys: the page is public either way."""
    settings = Settings(cache_dir=tmp_path, files_dir=tmp_path / "files", api_keys=request.param)
    app = create_app(
        settings, queue=InMemoryJobQueue(), store=LocalArtifactStore(settings.storage.files_root)
    )
    with TestClient(app) as test_client:
        yield test_client


def test_the_page_and_its_assets_are_served(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert 'src="static/playground.js"' in page.text
    assert 'href="static/playground.css"' in page.text
    for name, media_type in [("playground.js", "text/javascript"), ("playground.css", "text/css")]:
        asset = client.get(f"/static/{name}")
        assert asset.status_code == 200
        assert asset.headers["content-type"].startswith(media_type)
        assert asset.content == (STATIC / name).read_bytes()
    assert client.head("/").status_code == 200


@pytest.mark.parametrize("path", ["/static/index.html", "/static/nope.js", "/static/..%2Fapp.py"])
def test_only_the_known_assets_are_served(client: TestClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 404
    assert response.json()["detail"].endswith("not found")


def test_the_page_is_not_part_of_the_api_schema(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert "/" not in paths
    assert not any(path.startswith("/static") for path in paths)


def test_nothing_is_loaded_from_elsewhere() -> None:
    """The machine the page runs on may have no internet: no CDN, fonts or remote scripts."""
    for name in ("index.html", "playground.css", "playground.js"):
        text = (STATIC / name).read_text()
        assert not re.search(r"https?://[\w-]+\.[\w.-]+", text), name
        assert "//cdn" not in text, name
    assert "<script>" not in (STATIC / "index.html").read_text()  # no inline script (CSP)


class _Fields(HTMLParser):
    """The form controls of index.html: id -> attributes (and a select's options)."""

    def __init__(self) -> None:
        super().__init__()
        self.controls: dict[str, dict[str, Any]] = {}
        self._select: dict[str, Any] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes: dict[str, Any] = dict(attrs)
        if tag in ("input", "select", "textarea") and attributes.get("id"):
            self.controls[attributes["id"]] = attributes
            if tag == "select":
                attributes["options"] = []
                self._select = attributes
        elif tag == "option" and self._select is not None:
            self._select["options"].append(attributes["value"])
            if "selected" in attributes:
                self._select["selected"] = attributes["value"]

    def handle_endtag(self, tag: str) -> None:
        if tag == "select":
            self._select = None


def test_the_built_in_fields_match_the_schema() -> None:
    parser = _Fields()
    parser.feed((STATIC / "index.html").read_text())
    controls = parser.controls
    props = Flux2FlashEditInput.model_json_schema()["properties"]
    sides = ImageSize.model_json_schema()["properties"]

    for name in ("guidance_scale", "num_images"):
        control = controls[name]
        assert float(control["value"]) == props[name]["default"], name
        assert float(control["min"]) == props[name]["minimum"], name
        assert float(control["max"]) == props[name]["maximum"], name
    assert int(controls["prompt"]["maxlength"]) == props["prompt"]["maxLength"]
    assert "value" not in controls["seed"]  # empty: a random seed
    for side in ("width", "height"):
        assert float(controls[side]["min"]) == sides[side]["minimum"]
        assert float(controls[side]["max"]) == sides[side]["maximum"]

    sizes = controls["image_size"]
    presets = next(v["enum"] for v in props["image_size"]["anyOf"] if "enum" in v)
    assert sizes["options"] == [*presets, "custom"]
    assert sizes["selected"] == props["image_size"]["default"]
    formats = controls["output_format"]
    assert sorted(formats["options"]) == sorted(props["output_format"]["enum"])
    assert formats["selected"] == props["output_format"]["default"]
    for name in ("enable_prompt_expansion", "enable_safety_checker", "sync_mode"):
        assert ("checked" in controls[name]) == props[name]["default"], name


def test_the_preset_labels_match_the_size_rules() -> None:
    script = (STATIC / "playground.js").read_text()
    block = script[
        script.index("const PRESET_SIZES") : script.index("};", script.index("PRESET_SIZES"))
    ]
    labels = {
        name: (int(w), int(h)) for name, w, h in re.findall(r"(\w+): \[(\d+), (\d+)\]", block)
    }
    assert labels == {name: (size.width, size.height) for name, size in PRESETS.items()}
