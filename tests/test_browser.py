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


def no_overlap(boxes: list[dict]) -> bool:
    """Consecutive tick labels' boxes do not overlap horizontally (each word readable on its own)."""
    boxes = sorted(boxes, key=lambda b: b["x"])
    return all(a["x"] + a["width"] <= b["x"] + 0.5 for a, b in zip(boxes, boxes[1:]))


@pytest.mark.parametrize("width", [1400, 390])
def test_compare_heatmaps_keep_every_source_word_readable(page, server, artifacts, width):
    page.set_viewport_size({"width": width, "height": 900})
    page.goto(server.url)
    page.locator("#input-text textarea").fill("Der Mann trägt einen roten Hut.")
    page.locator("#compare-button").click()
    page.locator("#compare-heatmap-concat .js-plotly-plot").wait_for(state="visible")
    for kind in ("dot", "general", "concat"):
        ticks = page.locator(f"#compare-heatmap-{kind} .xtick text")
        assert ticks.all_text_contents() == ["Der", "Mann", "trägt", "einen", "roten", "Hut", "."]
        assert no_overlap([t.bounding_box() for t in ticks.all()]), f"{kind}: source words overlap at {width} px"
        assert page.locator(f"#compare-heatmap-{kind}").bounding_box()["width"] >= min(300, width - 60)
    screenshot(page, artifacts, f"compare-{width}.png")
    page.set_viewport_size({"width": 1400, "height": 1000})


def click_tree_node(page, plot: str, token: str, step: int) -> None:
    """Click the marker of the beam-tree node labelled ``token`` at ``step`` (1-based); a node's label and
    marker are the same point of one trace."""
    step_x = [t.bounding_box()["x"] for t in page.locator(f"{plot} .xtick text").all()
              if t.text_content().strip().startswith(str(step))]
    for trace in page.locator(f"{plot} .scatterlayer .trace").all():
        labels, points = trace.locator(".textpoint text"), trace.locator(".points path")
        for i in range(min(labels.count(), points.count())):
            if labels.nth(i).text_content().strip() != token:
                continue
            points.nth(i).scroll_into_view_if_needed()
            box = points.nth(i).bounding_box()
            if step_x and abs(page.locator(f"{plot} .xtick text").nth(step - 1).bounding_box()["x"] - box["x"]) < 40:
                page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
                return
    raise AssertionError(f"no node {token!r} at step {step} in {plot}")


def test_look_inside_click_the_tree_pick_a_word_and_score_a_translation(page, server, tiny_translators, artifacts):
    from playwright.sync_api import expect

    page.goto(server.url)
    page.locator("#input-text textarea").fill("Ein Hund läuft.")
    page.locator("#inside-button").click()
    page.locator("#beam-tree .js-plotly-plot").wait_for(state="visible")
    expect(page.locator("#inside-summary")).to_contain_text("A dog runs.")
    screenshot(page, artifacts, "inside-tree.png")

    tree = tiny_translators["general"].beam_tree("Ein Hund läuft.", beam_size=5)
    second = sorted((n for n in tree.nodes if n.step == 1 and n.token not in ("dog", "</s>")), key=lambda n: -n.score)[0]
    click_tree_node(page, "#beam-tree", second.token, 2)
    prefix = "A " + second.token
    expect(page.locator("#whatif-prefix textarea")).to_have_value(prefix)
    expect(page.locator("#whatif-result mark.nmt-forced")).to_have_text(prefix)
    [want] = tiny_translators["general"].translate(["Ein Hund läuft."], prefix=[prefix])
    expect(page.locator("#whatif-result")).to_contain_text(want.text[len(prefix):].strip())
    page.locator("#whatif-heatmap .js-plotly-plot").wait_for(state="visible")

    page.locator("#whatif-position input").click()
    page.get_by_role("option", name="3. runs", exact=True).click()
    page.locator("#whatif-word input").click()
    page.get_by_role("option").first.click()
    expect(page.locator("#whatif-prefix textarea")).to_have_value(re.compile(r"^A dog \S+$"))
    page.locator("#whatif-button").click()
    expect(page.locator("#whatif-status")).to_contain_text("forced words")

    page.locator("#score-input textarea").fill("A cat runs.")
    page.locator("#score-button").click()
    expect(page.locator("#score-result")).to_contain_text("Model error")
    page.locator("#score-heatmap .js-plotly-plot").wait_for(state="visible")
    assert page.locator("#score-heatmap .ytick text").all_text_contents() == ["A", "cat", "runs", ".", "</s>"]
    screenshot(page, artifacts, "inside-whatif-score.png")
    page.set_viewport_size({"width": 390, "height": 900})
    screenshot(page, artifacts, "inside-phone.png")
    page.set_viewport_size({"width": 1400, "height": 1000})


def test_each_n_best_candidate_shows_its_own_heatmap(page, server, tiny_translators):
    from playwright.sync_api import expect

    page.goto(server.url)
    page.locator("#input-text textarea").fill("Ein Hund läuft.")
    page.locator("#translate-button").click()
    page.locator("#heatmap-0 .js-plotly-plot").wait_for(state="visible")
    [r] = tiny_translators["general"].translate(["Ein Hund läuft."], beam_size=5, n_best=3)
    page.locator("#candidate-0 label", has_text="#2").click()
    expect(page.locator("#heatmap-0 .ytick text")).to_have_text(r.n_best[1].tokens)  # (waits for the redraw)


def test_train_a_tiny_model_and_watch_it_learn(page, server, artifacts):
    """The Train tab: start a tiny job on 200 Multi30k pairs, see the curves and the tracked attention
    appear and the job finish, then translate with the model it made."""
    from conftest import shared_data

    shared_data()  # (the tab trains on the Multi30k folder)
    page.goto(server.url)
    page.get_by_role("tab", name="Train a model").click()
    page.locator("#train-epochs input[type=number]").fill("2")
    page.locator("#train-epochs input[type=number]").press("Enter")
    page.locator("#train-pairs input[type=number]").fill("200")
    page.locator("#train-pairs input[type=number]").press("Enter")
    page.locator("#train-start").click()
    page.locator("#train-curves .js-plotly-plot").wait_for(state="visible", timeout=180_000)
    screenshot(page, artifacts, "train-running.png")
    page.locator("#train-status", has_text="pairs · done").wait_for(timeout=180_000)
    page.locator("#train-tracked .js-plotly-plot").wait_for(state="visible")
    assert "epoch 2 of 2" in page.locator("#train-status").inner_text() or "2 epochs" in page.locator("#train-status").inner_text()
    screenshot(page, artifacts, "train-done.png")
    from playwright.sync_api import expect

    page.locator("#train-use").click()  # (fills the model field: the update arrives asynchronously)
    expect(page.locator("#hub-id input, #hub-id textarea").first).to_have_value(re.compile(r"^job:[0-9a-f]{24}$"))
