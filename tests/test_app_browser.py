"""The app in a real browser: `streamlit run` on a free localhost port, driven by headless
Chromium through Playwright. `make test` installs Debian's chromium when it is missing."""

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from conftest import REPO, lesion
from PIL import Image

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# As Chromium needs them in a container without network: no sandbox (root), no GPU, and no
# background connections (refused here, and slow to time out).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (`make test` installs it)"),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_healthy(url: str, server: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"streamlit exited early:\n{server.stdout.read()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.read().strip() == b"ok":
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"streamlit did not answer on {url} within {timeout} s")


@pytest.fixture
def app_url(tiny_run, tmp_path):
    root = tmp_path / "project"
    shutil.copytree(tiny_run, root / "runs" / tiny_run.name)
    port = free_port()
    command = [
        sys.executable, "-m", "streamlit", "run", str(REPO / "app" / "streamlit_app.py"),
        "--server.port", str(port), "--server.address", "127.0.0.1",
    ]  # fmt: skip
    env = {**os.environ, "HAM_PROJECT_ROOT": str(root), "TF_CPP_MIN_LOG_LEVEL": "2"}
    server = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(url, server)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()


def test_upload_in_chromium_shows_probabilities_and_gradcam(app_url, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    image_path = tmp_path / "lesion.jpg"
    Image.fromarray(lesion(300, 225, seed=31)).save(image_path)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1600})
            page.goto(app_url)
            expect(page.get_by_text("not a medical device")).to_be_visible(timeout=60_000)
            page.locator("input[type=file]").set_input_files(image_path)
            expect(page.get_by_text("Risk level:")).to_be_visible(timeout=90_000)
            expect(page.get_by_text("Top 3")).to_be_visible()
            expect(page.get_by_text("1. ", exact=False).first).to_be_visible()
            overlay = (
                page.locator("[data-testid=stImage]").filter(has_text="Grad-CAM for").locator("img")
            )
            expect(overlay).to_be_visible()
            loaded = overlay.evaluate("img => img.complete && img.naturalWidth")
            assert loaded >= 256  # the overlay arrived and decoded
            expect(page.locator(".vega-embed")).to_be_visible()  # the probability chart
            page.screenshot(path=str(tmp_path / "app.png"), full_page=True)
        finally:
            browser.close()
    assert (tmp_path / "app.png").stat().st_size > 10_000
