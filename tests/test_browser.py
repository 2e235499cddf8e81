"""The demo in a real browser: Debian chromium driven by Playwright, against app.py on tiny models.

Screenshots go to ``$NMT_ARTIFACTS`` (else a pytest temp folder); their paths are printed.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_app import AppServer, app_env, build_catalog, free_port  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = 90_000

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                reason=f"Debian chromium is not installed at {CHROMIUM} (apt-get install -y chromium)")


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_translators):
    tmp = tmp_path_factory.mktemp("browser-app")
    checkpoints = build_catalog(tmp / "checkpoints", tiny_translators)
    with AppServer(app_env(checkpoints, tmp, free_port()), tmp / "server.log") as app:
        yield app


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> Path:
    folder = Path(os.environ.get("NMT_ARTIFACTS") or tmp_path_factory.mktemp("artifacts"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(str(tmp_path_factory.mktemp("chromium-profile")),
                                                        executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
                                                        viewport={"width": 1400, "height": 1000})
        context.set_default_timeout(TIMEOUT_MS)
        yield context.new_page()
        context.close()


def screenshot(page, artifacts: Path, name: str) -> Path:
    path = artifacts / name
    page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")
    return path


def test_type_set_beam_switch_attention_translate_and_read_the_heatmap(page, server, tiny_translators, artifacts):
    from playwright.sync_api import expect

    page.goto(server.url)
    page.locator("#input-text textarea").fill("Ein Hund läuft.")
    slider = page.locator("#beam-size input[type=range]")
    slider.focus()
    for _ in range(2):
        slider.press("ArrowLeft")  # 5 -> 3
    expect(page.locator("#beam-size input[type=number]")).to_have_value("3")
    page.locator("#attention label", has_text="dot ·").click()
    page.locator("#translate-button").click()

    heatmap = page.locator("#heatmap-0 .js-plotly-plot")
    heatmap.wait_for(state="visible")
    expected = tiny_translators["dot"].translate(["Ein Hund läuft."], beam_size=3, replace_unk=True)[0]
    assert page.locator("#heatmap-0 .xtick text").all_text_contents() == expected.src_tokens
    assert page.locator("#heatmap-0 .ytick text").all_text_contents() == expected.tokens
    assert heatmap.bounding_box()["height"] > 200
    assert "de-en-dot" in page.locator("#status").inner_text()
    assert expected.text in page.locator("#slot-0").inner_text()
    assert screenshot(page, artifacts, "translate.png").stat().st_size > 10_000


def test_compare_shows_every_attention_type_side_by_side(page, server, artifacts):
    page.locator("#compare-button").click()
    page.locator("#compare-heatmap-concat .js-plotly-plot").wait_for(state="visible")
    for kind in ("dot", "general", "concat"):
        ticks = page.locator(f"#compare-heatmap-{kind} .xtick text").all_text_contents()
        assert ticks == ["Ein", "Hund", "läuft", "."]
    assert "no attention" in page.locator("#compare-none").inner_text()
    assert page.locator("#compare-heatmap-none").is_hidden()
    screenshot(page, artifacts, "compare.png")


def test_model_card_shows_training_curves(page, server, artifacts):
    page.locator("#attention label", has_text="general ·").click()
    page.get_by_role("tab", name="Model card").click()
    page.locator("#training-curves .js-plotly-plot").wait_for(state="visible")
    assert "BLEU 33.25" in page.locator("#model-card").inner_text()
    screenshot(page, artifacts, "model-card.png")


def test_clicking_an_example_fills_the_input(page, server):
    from playwright.sync_api import expect

    example = page.locator("#examples button").first
    example_text = example.inner_text().strip().rstrip("…")
    example.click()
    expect(page.locator("#input-text textarea")).to_have_value(re.compile("^" + re.escape(example_text[:20])))
