"""The listening page in a real headless Chromium (Debian's, driven by Playwright): find a track,
play it (``canplay``, answered with 206), see its neighbours with the "not validated" badge,
exclude one and see the list change, screenshot."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.serve.conftest import ServerThread, chromium_path

playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")


@pytest.fixture(scope="module")
def chromium():
    path = chromium_path()
    if path is None:
        pytest.skip(
            "no Chromium here: install it with 'apt-get install -y chromium' (.ci/run does)"
        )
    return path


def test_listen_find_neighbours_and_exclude(home, chromium, tmp_path):
    from messai.serve.app import create_app
    from messai.serve.live import ServeConfig

    audio_status: list[int] = []
    with (
        ServerThread(create_app(ServeConfig(home=home))) as srv,
        playwright_api.sync_playwright() as p,
    ):
        browser = p.chromium.launch(
            executable_path=chromium,
            headless=True,
            args=["--autoplay-policy=no-user-gesture-required", "--mute-audio"],
        )
        try:
            # bypass_csp: lets the test harness evaluate its own expressions; the page itself
            # runs under its strict policy either way (script-src 'self')
            page = browser.new_page(viewport={"width": 1280, "height": 900}, bypass_csp=True)
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on(
                "response",
                lambda r: audio_status.append(r.status) if "/audio" in r.url else None,
            )
            page.set_default_timeout(90_000)  # a loaded CI machine: generous, never a timing check
            page.goto(srv.url + "/")
            page.wait_for_selector("#dataset option[value='lib']", state="attached")
            page.wait_for_function("document.querySelectorAll('#tracks li').length === 10")
            # keyboard: '/' focuses the search box
            page.keyboard.press("/")
            assert page.evaluate("document.activeElement.id") == "q"
            page.keyboard.type("t1")
            page.keyboard.press("Enter")
            # the answer replaces the full list (a/t1 was in it already): wait for one match
            page.wait_for_function("document.querySelectorAll('#tracks li').length === 1")
            track = page.locator("#tracks button[data-track='a/t1']")
            assert track.count() == 1
            with page.expect_response(lambda r: "/audio" in r.url) as first_audio:
                track.click()
            assert first_audio.value.status == 206  # the media element asks for a range
            page.wait_for_selector("#query-id")
            assert page.text_content("#query-id") == "a/t1"
            assert not page.is_visible("#shaping")  # nothing included or excluded yet
            # play: the element reaches canplay on a ranged (206) answer
            page.wait_for_function("document.getElementById('player').readyState >= 3")
            page.evaluate("document.getElementById('player').play()")
            page.wait_for_function("document.getElementById('player').currentTime > 0")
            assert 206 in audio_status, audio_status
            # neighbours, with the badge (the tiny store's aspects are not validated)
            page.click("#neighbours-btn")
            page.wait_for_selector("#neighbours li.neighbour")
            before = page.eval_on_selector_all(
                "#neighbours li.neighbour", "els => els.map(e => e.dataset.track)"
            )
            assert len(before) == 9 and "a/t1" not in before
            assert page.is_visible("#not-validated")
            scores = page.eval_on_selector_all(
                ".neighbour .score", "els => els.map(e => e.textContent)"
            )
            assert all(s.replace(".", "", 1).replace("-", "", 1).isdigit() for s in scores)
            # exclude the first neighbour: re-queried with a negative example, the list changes
            with page.expect_request(lambda r: r.method == "POST") as post:
                page.click(f"#neighbours li.neighbour[data-track='{before[0]}'] button.exclude")
            assert '"negative":["' + before[0] + '"]' in (post.value.post_data or "")
            page.wait_for_function(
                "first => ![...document.querySelectorAll('#neighbours li.neighbour')]"
                ".some(e => e.dataset.track === first)",
                arg=before[0],
            )
            after = page.eval_on_selector_all(
                "#neighbours li.neighbour", "els => els.map(e => e.dataset.track)"
            )
            assert after != before and before[0] not in after and "a/t1" not in after
            assert page.text_content("#negatives").startswith(before[0])
            assert page.is_visible("#shaping")
            # the probe heat-map loaded
            page.wait_for_function(
                "document.getElementById('heatmap').complete && document.getElementById('heatmap').naturalWidth > 0"
            )
            shot = tmp_path / "listening-page.png"
            page.screenshot(path=str(shot), full_page=True)
            assert not errors, errors
        finally:
            browser.close()
    assert shot.stat().st_size > 10_000
    keep = Path(__import__("os").environ.get("MESS_SCREENSHOT_DIR", ""))
    if keep.name:
        keep.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, keep / shot.name)
