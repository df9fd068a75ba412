"""The README documents every setting (so the docs cannot fall behind the code)."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.settings import Settings

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


@pytest.mark.parametrize("name", sorted(Settings.option_names()))
def test_every_setting_is_in_the_readme(name: str) -> None:
    assert f"`FLUX2_{name.upper()}`" in README
