"""How docs/figures/app.png is made: start examples/app.py on the demo's editor, open it in headless Chromium, pick
the first example, press Edit, and take a screenshot once the answers are in.

    pip install playwright      # the browser: Debian's `chromium` package, or `playwright install chromium`
    python examples/app_screenshot.py --python .venv/bin/python --editor outputs/demo --chromium /usr/bin/chromium

Not part of the library or its tests (they drive the app through `gradio_client`).
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for(url: str, process: subprocess.Popen, timeout: float = 300.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"The app exited with code {process.returncode}.")
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            time.sleep(1.0)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--python", default="python", help="The Python that has hf_lime and gradio.")
    parser.add_argument("--editor", default="outputs/demo")
    parser.add_argument("--chromium", default=None, help="A Chromium executable (default: playwright's own).")
    parser.add_argument("--output", default=str(HERE.parent / "docs" / "figures" / "app.png"))
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright

    port = _free_port()
    command = [args.python, str(HERE / "app.py"), "--editor", args.editor, "--port", str(port)]
    app = subprocess.Popen(command, env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"})
    try:
        url = f"http://127.0.0.1:{port}/"
        _wait_for(url, app)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=args.chromium, headless=True)
            page = browser.new_page(viewport={"width": 1280, "height": 1100})
            page.goto(url)
            page.wait_for_load_state("networkidle")
            example = page.locator("tr.tr-body td, button.gallery-item").first
            example.wait_for(timeout=60_000)
            example.click(force=True)  # the first example fills the inputs
            page.wait_for_function("document.querySelector('textarea') && document.querySelector('textarea').value")
            page.get_by_role("button", name="Edit", exact=True).click()
            page.get_by_text("edit(s) applied").first.wait_for(timeout=300_000)
            time.sleep(2.0)  # let the plot render
            page.screenshot(path=args.output, full_page=True)
            browser.close()
        print(f"Wrote {args.output}")
    finally:
        app.terminate()
        app.wait(timeout=30)


if __name__ == "__main__":
    main()
