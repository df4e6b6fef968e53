"""End to end in a real browser (Debian's chromium through Playwright): log in, rate, rank with a
tie by keyboard, rank another task by drag-and-drop, submit, export."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from app_support import PASSWORD, seed
from rlhf.feedback.app.db import open_database
from rlhf.feedback.label_cli import label_app

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
KEYBOARD_TASK = {"id": "capital", "prompt": "What is the capital of France? Answer in one sentence.",
                 "responses": ["The capital of France is Paris.", "It is Lyon.", "Marseille, probably."]}
DRAG_TASK = {"id": "greet", "prompt": "Greet the user politely.",
             "responses": ["Hello! How can I help you today?", "what"]}


@pytest.fixture
def browser():
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not installed (scripts/setup.sh test installs Debian's chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield browser
        browser.close()


def label_by_keyboard(page, wanted: dict[str, tuple[int, int]]) -> None:
    """wanted: response text -> (rating, rank). Select with a letter, Shift+digit rates, digit ranks."""
    cards = page.locator("article.response")
    for pos in range(cards.count()):
        text = cards.nth(pos).locator(".text").inner_text()
        rating, rank = wanted[text]
        page.keyboard.press("abcdefgh"[pos])
        page.keyboard.press(f"Shift+Digit{rating}")
        page.keyboard.press(f"Digit{rank}")
    page.locator("article.response").first.locator('input[data-flag="harmful"]').check()
    page.locator("article.response").first.click()  # focus back on the page, away from the checkbox


def label_by_dragging(page, wanted: dict[str, tuple[int, int]]) -> None:
    cards = page.locator("article.response")
    for pos in range(cards.count()):
        card = cards.nth(pos)
        rating, rank = wanted[card.locator(".text").inner_text()]
        card.locator(f'.likert input[value="{rating}"] + span').click()
        chip = page.locator(f'.chip[data-index="{card.get_attribute("data-index")}"]')
        chip.drag_to(page.locator(f'.rank-rows [data-rank="{rank}"]'))


def test_annotator_labels_in_browser_and_export_holds_the_expected_pairs(db_path, tmp_path, browser,
                                                                         start_server):
    seed(open_database(db_path), tmp_path, annotators=["ann1"], tasks=[KEYBOARD_TASK, DRAG_TASK])
    server = start_server(db_path)
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(f"{server.url}/login")
    page.fill('input[name="username"]', "ann1")
    page.fill('input[name="password"]', PASSWORD)
    page.click('button[type="submit"]')
    page.click("button.primary:has-text('Label')")
    for _ in range(2):
        page.wait_for_selector("article.response")
        here = page.url
        prompt = page.locator(".prompt .content").inner_text()
        if prompt == KEYBOARD_TASK["prompt"]:
            paris, lyon, marseille = KEYBOARD_TASK["responses"]
            label_by_keyboard(page, {paris: (6, 1), lyon: (2, 2), marseille: (3, 2)})
            assert page.locator(".rank-badge", has_text="(tie)").count() == 2
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "labeling-page.png"), full_page=True)
            page.keyboard.press("Control+Enter")
        else:
            hello, what = DRAG_TASK["responses"]
            label_by_dragging(page, {hello: (7, 1), what: (1, 2)})
            page.click("#submit")
        page.wait_for_url(lambda url: url != here)
    page.wait_for_url(f"{server.url}/projects")
    assert "2 done / 2 assigned" in page.content()

    out = tmp_path / "pairs.jsonl"
    result = CliRunner().invoke(label_app, ["export", "--db", db_path, "--project", "demo", "--out", str(out),
                                            "--format", "pairs"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted((r["prompt"], r["chosen"], r["rejected"]) for r in rows) == sorted([
        (KEYBOARD_TASK["prompt"], "The capital of France is Paris.", "It is Lyon."),
        (KEYBOARD_TASK["prompt"], "The capital of France is Paris.", "Marseille, probably."),
        (DRAG_TASK["prompt"], "Hello! How can I help you today?", "what"),
    ])
