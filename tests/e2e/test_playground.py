"""The web playground at ``GET /``, driven in headless Chromium against real servers.

The main test edits on the real tiny FLUX.2 model (``flux2-edit serve --model tiny``) and saves a
screenshot of the finished edit to ``tests/e2e/artifacts/playground.png``. The others run the app
in-process on the fake engine for what the tiny model cannot show cheaply: API keys, slow steps
(live progress, cancel) and flagged images.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from e2e_helpers import FakeServerFactory, Server, reference_png, save_artifact
from PIL import Image

from tests.helpers.loras import write_lora

try:
    from playwright.sync_api import expect
except ImportError:  # the browser fixture skips (fails under CI) and says how to install it
    expect = None

if TYPE_CHECKING:
    from playwright.sync_api import Page

pytestmark = pytest.mark.slow

RUN_TIMEOUT_MS = 60_000
PROMPT = "make the car #FF5733 and the sky deep blue"


def open_playground(page: Page, server: Server) -> None:
    """Load ``/`` and wait until the page has applied the server's schema."""
    page.goto(f"{server.origin}/")
    page.wait_for_selector("body[data-schema=loaded]", state="attached")


def assert_fits_the_window(page: Page) -> None:
    """Nothing (long log lines, error text, images) widens the page past the window."""
    assert page.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth")


def add_reference(page: Page, tmp_path: Path) -> None:
    page.set_input_files("#image-files", str(reference_png(tmp_path / "car.png")))
    expect(page.locator("#image-list li")).to_have_count(1)
    expect(page.locator("#image-list img")).to_have_attribute("src", re.compile(r"^data:image/png"))


def test_edit_on_the_tiny_model(
    page: Page, tiny_server: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    open_playground(page, tiny_server)

    # Every input field, with the defaults and ranges of the server's schema.
    assert page.input_value("#guidance_scale") == "2.5"
    guidance = page.locator("#guidance_scale")
    assert (guidance.get_attribute("min"), guidance.get_attribute("max")) == ("0", "20")
    expect(page.locator("#guidance_scale-help")).to_have_text("default 2.5 · 0–20")
    assert page.input_value("#num_images") == "1"
    assert page.locator("#num_images").get_attribute("max") == "4"
    assert page.input_value("#image_size") == "square_hd"
    presets = page.locator("#image_size option").evaluate_all("os => os.map(o => o.value)")
    assert presets == [
        "square_hd", "square", "portrait_4_3", "portrait_16_9", "landscape_4_3",
        "landscape_16_9", "custom",
    ]  # fmt: skip
    assert page.input_value("#output_format") == "png"
    assert page.input_value("#seed") == ""
    assert page.is_checked("#enable_safety_checker")
    assert not page.is_checked("#enable_prompt_expansion")
    assert not page.is_checked("#sync_mode")
    page.select_option("#image_size", "custom")
    expect(page.locator("#width")).to_be_visible()
    assert page.locator("#width").get_attribute("min") == "512"
    assert page.locator("#height").get_attribute("max") == "2048"
    expect(page.locator("#server-state")).to_have_text("ready")

    # The edit: a reference through the file input, a prompt with a hex colour, a small size.
    add_reference(page, tmp_path)
    page.fill("#prompt", PROMPT)
    expect(page.locator("#swatches li")).to_have_text(["#FF5733"])
    page.select_option("#image_size", "square")
    expect(page.locator("#width")).to_be_hidden()
    page.click("#submit")

    # Live progress from the status stream: the step log lines drive the bar.
    expect(page.locator("#progress-box")).to_be_visible()
    steps = re.compile(r"step \d+/\d+")
    expect(page.locator("#logs")).to_contain_text(steps, timeout=RUN_TIMEOUT_MS)

    # The result: the image, its download link, the seed, the timings and the prompt used.
    images = page.locator("#result-images img")
    expect(images).to_have_count(1, timeout=RUN_TIMEOUT_MS)
    expect(page.locator("#status-text")).to_contain_text("Completed")
    step = page.locator("#progress-box").get_attribute("data-step") or ""
    done, total = (int(n) for n in step.split("/"))
    assert done == total >= 1, step
    assert page.locator("#progress").evaluate("p => p.value === p.max")
    expect(page.locator("#error-box")).to_be_hidden()
    expect(page.locator("#result-seed")).to_have_text(re.compile(r"^\d+$"))
    expect(page.locator("#result-timings")).to_contain_text("inference")
    expect(page.locator("#result-prompt")).to_have_text(PROMPT)
    expect(page.locator("#result-images .badge")).to_have_count(0)
    images.first.evaluate("img => img.decode()")
    assert images.first.evaluate("img => [img.naturalWidth, img.naturalHeight]") == [512, 512]
    link = page.locator("#result-images a.download")
    expect(link).to_have_attribute("href", re.compile(r"^blob:"))
    with page.expect_download() as download_info:
        link.click()
    saved = tmp_path / "download.png"
    download_info.value.save_as(saved)
    assert download_info.value.suggested_filename.endswith(".png")
    with Image.open(saved) as downloaded:
        assert (downloaded.format, downloaded.size) == ("PNG", (512, 512))

    assert_fits_the_window(page)
    page.evaluate("() => document.activeElement && document.activeElement.blur()")
    shot = tmp_path / "playground.png"
    page.screenshot(path=str(shot), full_page=True)
    target = save_artifact(shot, "playground.png")
    with capsys.disabled():
        print(f"\nplayground screenshot: {target}")


def test_errors_show_the_fal_error(page: Page, tiny_server: Server, tmp_path: Path) -> None:
    open_playground(page, tiny_server)

    # No reference yet: the page says so itself, nothing is sent.
    page.fill("#prompt", "make it #00FF00")
    page.click("#submit")
    expect(page.locator("#images-error")).to_have_text("Add at least one reference image.")
    expect(page.locator("#progress-box")).to_be_hidden()

    # Out of range (the input's own max bypassed): the server's 422 detail, field by field.
    add_reference(page, tmp_path)
    page.eval_on_selector("#guidance_scale", "el => { el.removeAttribute('max'); el.value = 21; }")
    page.click("#submit")
    box = page.locator("#error-box")
    expect(box).to_be_visible(timeout=RUN_TIMEOUT_MS)
    expect(page.locator("#error-title")).to_contain_text("Invalid input (HTTP 422")
    expect(page.locator("#error-list li")).to_have_count(1)
    expect(page.locator("#error-list li")).to_contain_text("guidance_scale")
    expect(page.locator("#error-list li")).to_contain_text("less than or equal to 20")
    expect(page.locator("#error-list li")).to_contain_text("less_than_equal")
    expect(page.locator("#guidance_scale")).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#result")).to_be_hidden()
    expect(page.locator("#submit")).to_be_enabled()

    # A reference that cannot be fetched: the error points at image_urls[1].
    page.click("#reset")
    assert page.input_value("#guidance_scale") == "2.5"
    page.fill("#image-url", "http://127.0.0.1:9/missing.png")
    page.press("#image-url", "Enter")
    expect(page.locator("#image-list li")).to_have_count(2)
    page.select_option("#image_size", "square")
    page.click("#submit")
    expect(page.locator("#error-list li")).to_contain_text("image_urls[1]", timeout=RUN_TIMEOUT_MS)
    expect(page.locator("#error-title")).to_contain_text("HTTP 422")
    expect(page.locator('#image-list li[data-index="1"]')).to_have_class(re.compile("invalid"))
    expect(page.locator("#result")).to_be_hidden()
    assert_fits_the_window(page)
    shot = tmp_path / "playground-error.png"
    page.screenshot(path=str(shot), full_page=True)
    save_artifact(shot, "playground-error.png")


def test_api_keys_live_progress_and_cancel(
    page: Page, fake_server: FakeServerFactory, tmp_path: Path
) -> None:
    with fake_server(api_keys="playground-secret", step_seconds=0.15) as server:
        open_playground(page, server)
        add_reference(page, tmp_path)
        page.fill("#prompt", "make it #123ABC")
        page.select_option("#image_size", "square")

        # Keys are on and none was given: the submit's 401, and the key field opens.
        page.click("#submit")
        expect(page.locator("#error-title")).to_contain_text("Unauthorized")
        expect(page.locator("#key-box")).to_have_attribute("open", "")

        # With the key: the steps show while they run, and the output file (which needs the
        # key too) is fetched with it and shown from a blob: URL.
        page.fill("#api_key", "playground-secret")
        page.click("#submit")
        expect(page.locator("#status-text")).to_contain_text(re.compile(r"Running: step [1-7]/8"))
        expect(page.locator("#progress")).to_have_attribute("max", "8")
        # Live previews (on by default): announced in the logs, fetched with the key, shown
        # while the steps run, and replaced by the result.
        expect(page.locator("#preview-box")).to_be_visible(timeout=RUN_TIMEOUT_MS)
        expect(page.locator("#preview")).to_have_attribute("src", re.compile(r"^blob:"))
        expect(page.locator("#preview-caption")).to_contain_text(
            re.compile(r"preview [1-3]/3 after step [246]/8")
        )
        assert (
            page.locator("#preview").evaluate("i => i.decode().then(() => i.naturalWidth)") == 128
        )
        images = page.locator("#result-images img")
        expect(images).to_have_count(1, timeout=RUN_TIMEOUT_MS)
        expect(images).to_have_attribute("src", re.compile(r"^blob:"))
        assert images.first.evaluate("img => img.decode().then(() => img.naturalWidth)") == 512
        expect(page.locator("#preview-box")).to_be_hidden()
        expect(page.locator("#error-box")).to_be_hidden()
        assert "IN_PROGRESS" in (page.locator("#progress-box").get_attribute("data-seen") or "")

        # The key is remembered in this browser.
        page.reload()
        page.wait_for_selector("body[data-schema=loaded]", state="attached")
        assert page.input_value("#api_key") == "playground-secret"

        # Cancel while it runs: fal's cancel, then a calm notice rather than a failure.
        add_reference(page, tmp_path)
        page.fill("#prompt", "slow one")
        page.select_option("#image_size", "square")
        page.click("#submit")
        expect(page.locator("#cancel")).to_be_visible()
        expect(page.locator("#logs")).to_contain_text("step 1/8", timeout=RUN_TIMEOUT_MS)
        page.click("#cancel")
        expect(page.locator("#error-title")).to_have_text("Cancelled", timeout=RUN_TIMEOUT_MS)
        expect(page.locator("#error-box")).to_have_class(re.compile("notice"))
        expect(page.locator("#cancel")).to_be_hidden()
        expect(page.locator("#result")).to_be_hidden()


def test_flagged_images_are_marked(
    page: Page, fake_server: FakeServerFactory, tmp_path: Path
) -> None:
    with fake_server(flag_everything=True) as server:
        open_playground(page, server)
        add_reference(page, tmp_path)
        page.fill("#prompt", "anything")
        page.select_option("#image_size", "square")
        page.fill("#num_images", "2")
        page.check("#sync_mode")
        page.click("#submit")
        images = page.locator("#result-images img")
        expect(images).to_have_count(2, timeout=RUN_TIMEOUT_MS)
        for image in images.all():  # sync_mode: the output is data: URIs, shown as they are
            expect(image).to_have_attribute("src", re.compile(r"^data:image/png;base64,"))
        expect(page.locator("#result-images .badge")).to_have_text(
            ["flagged by the safety checker"] * 2
        )
        expect(page.locator("#error-title")).to_have_text("Flagged by the safety checker")
        expect(page.locator("#error-message")).to_contain_text("2 of 2 images were flagged")
        expect(page.locator("#result-seed")).to_have_text(re.compile(r"^\d+$"))


def test_the_form_follows_the_picked_endpoint(
    page: Page, fake_server: FakeServerFactory, tmp_path: Path
) -> None:
    """Text-to-image with LoRAs: no references, steps and acceleration, LoRA rows; a bad LoRA
    is marked at its row, a good one generates."""
    write_lora(tmp_path / "loras" / "brand.safetensors")
    with fake_server(lora_dir=tmp_path / "loras") as server:
        open_playground(page, server)
        expect(page.locator("#images-field")).to_be_visible()  # flash/edit first
        expect(page.locator("#steps-field")).to_be_hidden()
        page.select_option("#endpoint", "fal-ai/flux-2/lora")
        expect(page.locator("#images-field")).to_be_hidden()
        expect(page.locator("#loras-field")).to_be_visible()
        expect(page.locator("#submit")).to_have_text("Generate")
        assert page.input_value("#num_inference_steps") == "28"
        assert page.input_value("#acceleration") == "regular"
        assert page.input_value("#image_size") == "landscape_4_3"
        page.fill("#prompt", "a lighthouse")
        page.select_option("#image_size", "square")
        page.fill("#num_inference_steps", "5")
        page.fill("#lora-path-0", "missing")
        page.click("#submit")
        expect(page.locator("#lora-path-0")).to_have_attribute("aria-invalid", "true",
                                                               timeout=RUN_TIMEOUT_MS)  # fmt: skip
        page.fill("#lora-path-0", "brand")
        page.fill("#lora-scale-0", "0.5")
        page.click("#submit")
        expect(page.locator("#result-images img")).to_have_count(1, timeout=RUN_TIMEOUT_MS)
        expect(page.locator("#logs")).to_contain_text("step 5/5")
        page.select_option("#endpoint", "fal-ai/flux-2/lora/edit")
        expect(page.locator("#image-count")).to_have_text("0 of 3")
