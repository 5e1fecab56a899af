"""The chat web page in headless Chromium against the real server (the session server, which
its service JSON starts with `metadata.enable_webservice`): token, streamed answers, history,
the stop button, and a screenshot kept as a test artefact.

Chromium is Debian's package (`make browser` installs it), driven by Playwright's Python package
through `executable_path`, so no browser is downloaded. Without either the test is skipped.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import (
    Server,
    engine_children,
    first_tokens,
    held,
    run_in_slices,
)
from tests.e2e.test_reliability import disconnects, engine_load, in_flight, wait_for

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
TIMEOUT_MS = 60_000
# [answer number, its text's length] at each DOM change: growing lengths mean it streamed.
RECORD_ANSWER_LENGTHS = """() => {
  window.answerLengths = [];
  new MutationObserver(() => {
    const answers = document.querySelectorAll(".message.assistant");
    const text = answers.length ? answers[answers.length - 1].firstChild : null;
    if (text) window.answerLengths.push([answers.length - 1, text.data.length]);
  }).observe(document.getElementById("conversation"),
             { childList: true, subtree: true, characterData: true });
}"""

# Clicks Stop from within the page as soon as the answer has text; `stopClicked` says whether
# Stop was enabled then (a disabled button ignores the click).
CLICK_STOP_AT_THE_FIRST_TOKEN = """() => {
  const conversation = document.getElementById("conversation");
  new MutationObserver((_, observer) => {
    const answers = conversation.querySelectorAll(".message.assistant");
    const answer = answers[answers.length - 1];
    if (!answer || !answer.firstChild || !answer.firstChild.data) return;
    observer.disconnect();
    const stop = document.getElementById("stop");
    window.stopClicked = !stop.disabled;
    stop.click();
  }).observe(conversation, { childList: true, subtree: true, characterData: true });
}"""


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    if CHROMIUM is None:
        pytest.skip("no chromium: `make browser` installs Debian's package (root and apt needed)")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, server: Server):
    from playwright import sync_api

    context = browser.new_context(viewport={"width": 1100, "height": 720})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    # A loaded 2-core CI machine can take longer than the 5 s default to render a change.
    sync_api.expect.set_options(timeout=TIMEOUT_MS)
    yield page
    context.close()


def artefact_dir(tmp_path: Path) -> Path:
    directory = Path(os.environ.get("LLM_RUNTIME_TEST_ARTIFACTS") or tmp_path)
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def open_with_token(page, server: Server) -> None:
    from playwright.sync_api import expect

    page.goto(f"{server.url}/webui")
    # Without the token the page says what is wrong, with the server's own message.
    expect(page.locator("#error")).to_contain_text("401: missing Authorization header")
    page.fill("#token", server.token)
    page.press("#token", "Tab")  # `change` stores it and reconnects
    expect(page.locator("#model")).to_have_text("llm-runtime-demo")
    expect(page.locator("#error")).to_be_hidden()


def test_chat_streams_keeps_history_and_sends_the_controls(page, server: Server, tmp_path):
    from playwright.sync_api import expect

    open_with_token(page, server)
    page.fill("#system", "Answer briefly.")
    page.fill("#temperature", "0.5")
    page.fill("#top_p", "0.9")
    page.fill("#max_tokens", "300")
    page.evaluate(RECORD_ANSWER_LENGTHS)
    sent = []
    page.on("request", lambda r: r.url.endswith("/v1/chat/completions") and sent.append(r))
    answers = page.locator(".message.assistant")
    for turn, text in enumerate(("Hello there!", "And a second question?")):
        page.fill("#prompt", text)
        page.click("#send")
        expect(answers.nth(turn).locator(".note")).to_contain_text("tokens in")

    lengths = [n for answer, n in page.evaluate("window.answerLengths") if answer == 0 and n]
    streamed = f"the answer did not stream: its text lengths were {lengths}"
    assert lengths == sorted(lengths), streamed
    assert len(set(lengths)) >= 3, streamed
    screenshot = artefact_dir(tmp_path) / "webui-chat.png"
    page.screenshot(path=str(screenshot), full_page=True)
    print(f"\nweb page: the answer grew through {len(set(lengths))} lengths; {screenshot}")

    assert len(sent) == 2
    assert sent[1].headers["authorization"] == f"Bearer {server.token}"
    body = json.loads(sent[1].post_data)
    assert body["stream"] is True
    assert body["model"] == "llm-runtime-demo"
    assert (body["temperature"], body["top_p"], body["max_tokens"]) == (0.5, 0.9, 300)
    first_text = answers.nth(0).evaluate("e => e.firstChild.data")
    assert body["messages"] == [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "Hello there!"},
        {"role": "assistant", "content": first_text},
        {"role": "user", "content": "And a second question?"},
    ]


def test_stop_aborts_the_answer_in_the_engine(page, server: Server):
    """Stop mid-answer keeps the answer so far and aborts the request in the engine.

    On a loaded 2-core machine the engine can finish the whole answer (2000 tokens in 5 to
    14 s in CI runs) before the page draws its first token, and a click on Stop comes too late.
    So the engine is held (SIGSTOP) and let run in 10 ms slices until the server has a first
    token; it stays held while the page catches up and the click lands: always mid-answer."""
    from playwright.sync_api import expect

    open_with_token(page, server)
    page.fill("#max_tokens", "2000")  # the demo model rarely samples its end
    before, answered = disconnects(server), first_tokens(server)
    page.fill("#prompt", "Tell me a long story")
    answer = page.locator(".message.assistant").last
    engine = engine_children(server)
    with held(engine):
        page.click("#send")
        run_in_slices(engine, lambda: first_tokens(server) > answered, 60, "a first token")
        expect(answer).not_to_have_text("")  # the page has it too
        page.click("#stop")
        expect(answer.locator(".note")).to_have_text("stopped")
        wait_for(lambda: disconnects(server) > before, 10, "the server to see the page leave")
    stopped = time.monotonic()
    expect(page.locator("#send")).to_be_enabled()
    expect(page.locator("#prompt")).to_have_value("")  # the answer so far stays in the history
    wait_for(lambda: in_flight(server) == 0 and engine_load(server) == (0, 0), 10, "idle engine")
    assert disconnects(server) - before == 1  # aborted by the server, not finished
    print(f"\nweb page stop: engine idle {time.monotonic() - stopped:.1f} s after its release")


def test_nothing_is_shown_after_stop(page, server: Server):
    """Events already read when Stop is clicked are dropped: the answer ends at the click even
    when the page fell behind the stream. The answer is stubbed in the browser, as one body,
    and the page clicks Stop at its first token."""
    from playwright.sync_api import expect

    open_with_token(page, server)
    events = [{"choices": [{"index": 0, "delta": {"content": word}}]} for word in ("One", " two")]
    stream = "".join(f"data: {json.dumps(event)}\n\n" for event in events) + "data: [DONE]\n\n"
    page.route(
        "**/v1/chat/completions",
        lambda route: route.fulfill(status=200, body=stream, content_type="text/event-stream"),
    )
    page.evaluate(CLICK_STOP_AT_THE_FIRST_TOKEN)
    page.fill("#prompt", "Count")
    page.click("#send")
    answer = page.locator(".message.assistant").last
    expect(answer.locator(".note")).to_have_text("stopped")
    assert page.evaluate("window.stopClicked")
    assert answer.evaluate("e => e.firstChild.data") == "One"


def test_errors_show_the_servers_message(page, server: Server):
    """A refusal (429 here) and an error chunk mid-stream, as the runtime sends them; the
    answers are stubbed in the browser, as a busy or draining server is hard to time."""
    from playwright.sync_api import expect

    open_with_token(page, server)
    refusal = {"error": {"message": "the server is at its limit", "code": 429}}
    page.route(
        "**/v1/chat/completions",
        lambda route: route.fulfill(status=429, json=refusal, headers={"Retry-After": "1"}),
    )
    page.fill("#prompt", "Hello")
    page.click("#send")
    expect(page.locator("#error")).to_have_text("429: the server is at its limit")
    expect(page.locator("#prompt")).to_have_value("Hello")  # kept to retry, not in the history
    expect(page.locator(".message.user.failed")).to_have_count(1)

    chunk = {"choices": [{"index": 0, "delta": {"content": "Partial"}}]}
    failure = {"error": {"message": "the server is shutting down", "code": 503}}
    stream = f"data: {json.dumps(chunk)}\n\ndata: {json.dumps(failure)}\n\ndata: [DONE]\n\n"
    page.unroute("**/v1/chat/completions")
    page.route(
        "**/v1/chat/completions",
        lambda route: route.fulfill(status=200, body=stream, content_type="text/event-stream"),
    )
    page.click("#send")
    expect(page.locator("#error")).to_have_text("503: the server is shutting down")
    expect(page.locator(".message.assistant").last).to_have_text("Partial")
