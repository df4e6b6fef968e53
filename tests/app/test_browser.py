"""End to end in a real browser (Debian's chromium through Playwright): log in, rate, rank with a
tie by keyboard, rank another task by drag-and-drop, submit, export; media files shown on the
labeling page, and never run as a page or a script in the app's origin."""
from __future__ import annotations

import json
import math
import struct
import wave
from pathlib import Path

import pytest
from PIL import Image
from sqlalchemy import select
from typer.testing import CliRunner

from app_support import PASSWORD, seed
from rlhf.feedback.app.db import open_database
from rlhf.feedback.app.models import Assignment, Project, Task
from rlhf.feedback.label_cli import label_app

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
KEYBOARD_TASK = {"id": "capital", "prompt": "What is the capital of France? Answer in one sentence.",
                 "responses": ["The capital of France is Paris.", "It is Lyon.", "Marseille, probably."]}
DRAG_TASK = {"id": "greet", "prompt": "Greet the user politely.",
             "responses": ["Hello! How can I help you today?", "what"]}


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


def login_in_browser(page, url: str, username: str) -> None:
    page.goto(f"{url}/login")
    page.fill('input[name="username"]', username)
    page.fill('input[name="password"]', PASSWORD)
    page.click('button[type="submit"]')
    page.wait_for_url(f"{url}/projects")


def media_task(sessions, responses: list[str], external_id: str) -> int:
    """A task written straight into the database (as an old import or a hand edit could leave it)."""
    with sessions() as db:
        task = Task(project_id=db.scalar(select(Project.id)), external_id=external_id, kind="image",
                    prompt=[{"role": "user", "content": "Which clip is better?"}], responses=responses, is_gold=False)
        db.add(task)
        db.commit()
        return task.id


def test_media_never_runs_as_a_page_or_script_in_the_apps_origin(db_path, tmp_path, browser, start_server):
    """The issue's exploit: an HTML file named by a task, served from the app's origin, loads a
    script that is another task file; under script-src 'self' it ran and read the CSRF token."""
    sessions = open_database(db_path)
    seed(sessions, tmp_path, annotators=["ann1"], tasks=[DRAG_TASK])
    page_file, script_file = tmp_path / "evil.html", tmp_path / "evil.js"
    task_id = media_task(sessions, [str(page_file), str(script_file)], "evil")
    page_file.write_text(f'<html><head><script src="/media/{task_id}/1"></script></head><body>hi</body></html>')
    script_file.write_text("fetch('/api/session').then(r => r.json())"
                           ".then(d => { document.title = 'stolen:' + d.csrf_token; });")
    server = start_server(db_path)
    page = browser.new_page()
    login_in_browser(page, server.url, "ann1")
    page.click("button.primary:has-text('Label')")  # allocates both tasks to ann1
    page.wait_for_selector("article.response")
    response = page.goto(f"{server.url}/media/{task_id}/0")
    page.wait_for_timeout(1000)
    assert not page.title().startswith("stolen:"), page.title()
    assert response.status == 404


def test_media_root_images_show_on_the_labeling_page(db_path, tmp_path, browser, start_server):
    root = tmp_path / "media"
    root.mkdir()
    Image.new("RGB", (24, 16), (200, 30, 30)).save(root / "a.png")
    frames = [Image.new("P", (24, 16), i) for i in (1, 2)]
    frames[0].save(root / "b.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    (root / "trick.png").write_text("window.pwned = true;")  # a script disguised as an image
    with wave.open(str(root / "tone.wav"), "wb") as tone:  # half a second of a 440 Hz tone
        tone.setnchannels(1)
        tone.setsampwidth(2)
        tone.setframerate(8000)
        tone.writeframes(b"".join(struct.pack("<h", int(8000 * math.sin(2 * math.pi * 440 * i / 8000)))
                                  for i in range(4000)))
    sessions = open_database(db_path)
    seed(sessions, tmp_path, annotators=["ann1"], media_root=root,
         tasks=[{"id": "clips", "kind": "image", "prompt": "Which clip is better?", "responses": ["a.png", "b.gif"]}])
    trick = media_task(sessions, ["trick.png", "tone.wav"], "trick")
    server = start_server(db_path)
    page = browser.new_page()
    login_in_browser(page, server.url, "ann1")
    page.click("button.primary:has-text('Label')")  # allocates both tasks
    page.wait_for_selector("article.response")
    with sessions() as db:
        clips = db.scalar(select(Assignment.id).join(Task).where(Task.external_id == "clips"))
    page.goto(f"{server.url}/assignments/{clips}")
    assert page.locator("img.media").count() == 2
    page.wait_for_function("[...document.querySelectorAll('img.media')].every(i => i.complete)")
    sizes = page.evaluate("[...document.querySelectorAll('img.media')].map(i => [i.naturalWidth, i.naturalHeight])")
    assert sizes == [[24, 16], [24, 16]]
    loaded = page.evaluate("""url => new Promise(done => {
        const s = document.createElement('script');
        s.src = url;
        s.onload = () => done('loaded');
        s.onerror = () => done('refused');
        document.head.appendChild(s);
    })""", f"/media/{trick}/0")
    assert loaded == "refused" and page.evaluate("window.pwned === undefined")
    headers = page.evaluate("""url => fetch(url).then(r => [r.status, r.headers.get('content-type'),
                                                          r.headers.get('content-disposition')])""",
                            f"/media/{trick}/0")
    assert headers == [200, "image/png", 'attachment; filename="trick.png"']
    duration = page.evaluate("""url => new Promise(done => {
        const v = document.createElement('video');
        v.onloadedmetadata = () => done(v.duration);
        v.onerror = () => done(-1);
        v.src = url;
    })""", f"/media/{trick}/1")
    assert duration == pytest.approx(0.5, abs=0.01)  # media elements play attachments too
