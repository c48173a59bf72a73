"""Click -> result of the widgets in a real page, many clicks, and where the time goes.

Starts a throwaway Jupyter server on loopback (all it writes goes to a temp folder) and headless
Debian Chromium (Playwright, as the e2e tests do), opens the e2e's notebook (a TraceHeatmap of
the planted-fact model linked to a PatchOverlay) in JupyterLab or Notebook 7, Light or Dark,
and clicks heatmap cells, then image patches, one at a time. Per click it reads the page's own
``data-click-ms`` (send -> result rendered) and splits it with wall-clock stamps: the kernel's
(request handler, worker job) and the page's (each kernel message received, the result, the
next frame drawn). Ends with one JSON line of medians (ms).

    python benchmarks/widget_roundtrip.py [--ui lab|notebook7] [--theme light|dark] [--clicks 10]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from statistics import median

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "e2e"))
from conftest import CHROMIUM, CHROMIUM_ARGS, JUPYTER_DIRS  # noqa: E402
from test_e2e import OVERLAY, SETUP, notebook, run_all  # noqa: E402

# Wraps the widgets' handler and job (before any widget exists) to stamp them, one JSON line each.
STAMPS = """\
import json, time
from mllm_lens.widgets import PatchOverlay, TraceHeatmap

def _stamped(cls, name, before, after):
    inner = getattr(cls, name)
    def stamped(self, *args, **kwargs):
        with open({log!r}, "a") as out:
            out.write(json.dumps([before, time.time()]) + "\\n")
        try:
            return inner(self, *args, **kwargs)
        finally:
            with open({log!r}, "a") as out:
                out.write(json.dumps([after, time.time()]) + "\\n")
    setattr(cls, name, stamped)

for _cls, _job in ((TraceHeatmap, "_cell_job"), (PatchOverlay, "_patch_job")):
    _stamped(_cls, "_on_message", "handler", "handled")
    _stamped(_cls, _job, "job", "done")"""

# Page side: when each kernel message arrives, when a widget shows a result, the next frame after it.
PAGE = """(() => {
  const stamps = (window.mllStamps = []);
  const now = () => performance.timeOrigin + performance.now();
  const Socket = window.WebSocket;
  window.WebSocket = function (...args) {
    const ws = new Socket(...args);
    if (String(args[0]).includes("/channels")) ws.addEventListener("message", () => stamps.push(["message", now()]));
    return ws;
  };
  window.WebSocket.prototype = Socket.prototype;
  Object.assign(window.WebSocket, { CONNECTING: 0, OPEN: 1, CLOSING: 2, CLOSED: 3 });
  new MutationObserver((records) => {
    for (const { target } of records) {
      stamps.push(["result", now(), Number(target.dataset.clickMs)]);
      requestAnimationFrame(() => stamps.push(["frame", now()]));
    }
  }).observe(document, { subtree: true, attributes: true, attributeFilter: ["data-click-ms"] });
})();"""


class Server:
    """A Jupyter server on loopback, everything it writes under ``home`` (what the e2e's conftest does)."""

    def __init__(self, home: Path) -> None:
        self.root = home / "notebooks"
        self.root.mkdir()
        env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        for name in JUPYTER_DIRS:
            (home / name).mkdir()
            env[name] = str(home / name)
        settings = home / "JUPYTERLAB_SETTINGS_DIR" / "@jupyterlab" / "apputils-extension"
        settings.mkdir(parents=True)
        (settings / "notification.jupyterlab-settings").write_text('{"fetchNews": "false", "checkForUpdates": false}')
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        self.token, self.url = secrets.token_hex(16), f"http://127.0.0.1:{port}"
        cmd = [
            sys.executable,
            "-m",
            "jupyter",
            "lab",
            "--no-browser",
            "--ip=127.0.0.1",
            f"--port={port}",
            f"--IdentityProvider.token={self.token}",
            f"--ServerApp.root_dir={self.root}",
            "--ServerApp.port_retries=0",
            "--LabApp.news_url=",
        ]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            cmd.append("--allow-root")
        with open(home / "server.log", "wb") as log:
            self.proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 180
        while True:
            try:
                self.get("/api/status")
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    log = (home / "server.log").read_text()[-2000:]
                    raise RuntimeError(f"the Jupyter server did not start: {log}") from None
                time.sleep(0.5)

    def get(self, path: str, method: str = "GET") -> bytes:
        req = urllib.request.Request(
            f"{self.url}{path}", method=method, headers={"Authorization": f"token {self.token}"}
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.read()

    def stop(self) -> None:
        try:
            self.get("/api/shutdown", method="POST")
            self.proc.wait(timeout=20)
        except Exception:  # noqa: BLE001 - killed below
            pass
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)


def click_all(page, clicks: int) -> None:
    """``clicks`` heatmap cells (MLP panel, the entity and the token before it), then as many patches."""
    heatmap = page.locator("[data-testid=trace-heatmap]").first
    canvas = heatmap.get_by_test_id("heatmap-canvas")
    for i in range(clicks):
        box = canvas.evaluate(f"el => el.mllCellBox(1, {i % 5}, {19 - i % 2})")
        canvas.click(position={"x": box["x"] + box["w"] / 2, "y": box["y"] + box["h"] / 2})
        heatmap.get_by_test_id("cell-result").get_by_text(f"run #{i + 1}").wait_for()
        page.wait_for_timeout(300)  # the frame after the result, and an idle kernel
    overlay = page.locator("[data-testid=patch-overlay]").first
    image = overlay.get_by_test_id("overlay-canvas")
    for i in range(clicks):
        size = image.bounding_box()
        row, col = 1 + i % 2, 2 + i // 2 % 2
        image.click(position={"x": size["width"] * (col + 0.5) / 4, "y": size["height"] * (row + 0.5) / 4})
        overlay.get_by_test_id("patch-result").get_by_text(f"run #{i + 1}").wait_for()
        page.wait_for_timeout(300)


def split(stamps: list, kernel: list) -> list[dict[str, float]]:
    """Per click: the page's click_ms and its parts (ms), from page and kernel stamps on one clock."""
    rows = []
    results = [i for i, s in enumerate(stamps) if s[0] == "result"]
    for n, i in enumerate(results):
        end, click_ms = stamps[i][1], stamps[i][2]
        sent = end - click_ms
        got = [t for kind, t, *_ in stamps[:i] if kind == "message" and t >= sent]
        frame = next((t for kind, t, *_ in stamps[i:] if kind == "frame"), end)
        marks = {mark: 1000 * t for mark, t in kernel[4 * n : 4 * n + 4]}  # handler, handled, job, done
        rows.append(
            {
                "click_ms": click_ms,
                "to_kernel": marks["handler"] - sent,
                "to_job": marks["job"] - marks["handler"],
                "job": marks["done"] - marks["job"],
                "back": got[-1] - marks["done"],
                "page": end - got[-1],
                "to_frame": frame - end,
                "messages": len(got),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ui", choices=("lab", "notebook7"), default="lab")
    parser.add_argument("--theme", choices=("light", "dark"), default="light")
    parser.add_argument("--clicks", type=int, default=10)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as folder:
        server, log = Server(Path(folder)), Path(folder) / "kernel_stamps.jsonl"
        name = "roundtrip.ipynb"
        (server.root / name).write_text(notebook(STAMPS.format(log=str(log)), SETUP, OVERLAY))
        try:
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                page.set_default_timeout(240_000)
                page.add_init_script(PAGE)
                path = f"/lab/tree/{name}?reset" if args.ui == "lab" else f"/notebooks/{name}"
                page.goto(f"{server.url}{path}{'&' if '?' in path else '?'}token={server.token}")
                run_all(page, server, name)
                canvas = page.get_by_test_id("heatmap-canvas").first
                page.wait_for_function("el => el.mllCellBox && el.mllCellBox(1, 4, 19)", arg=canvas.element_handle())
                page.get_by_test_id("overlay-canvas").first.wait_for()
                if args.theme == "dark":  # Settings > Theme, as a person would
                    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile("^Settings$")).click()
                    page.locator(".lm-Menu-itemLabel", has_text=re.compile("^Theme$")).click()
                    page.locator(".lm-Menu-itemLabel", has_text=re.compile("^JupyterLab Dark$")).click()
                    page.wait_for_function("document.body.dataset.jpThemeLight === 'false'")
                page.wait_for_timeout(1000)
                log.write_text("")
                page.evaluate("window.mllStamps.length = 0")
                click_all(page, args.clicks)
                stamps = page.evaluate("window.mllStamps")
                browser.close()
        finally:
            server.stop()
        kernel = [json.loads(line) for line in log.read_text().splitlines()]
    rows = split(stamps, kernel)
    out: dict[str, object] = {"ui": args.ui, "theme": args.theme, "clicks": args.clicks}
    for kind, part in (("cell", rows[: args.clicks]), ("patch", rows[args.clicks :])):
        print(kind, "click_ms:", " ".join(f"{r['click_ms']:.1f}" for r in part))
        out[kind] = {key: round(median(r[key] for r in part), 1) for key in part[0]}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
