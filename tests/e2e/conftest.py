"""A throwaway JupyterLab (+ Notebook 7) server on loopback and a headless Debian Chromium.

Everything Jupyter writes goes to a temp folder (config, data, runtime, IPython, lab settings
and workspaces, XDG dirs); the server is shut down through its API and then killed by its
process group, whatever the tests did. Set ``MLLM_LENS_SKIP_E2E=1`` to skip these tests.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from mllm_lens.testing.patience import patient

CHROMIUM = os.environ.get("MLLM_LENS_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
JUPYTER_DIRS = (
    "JUPYTER_CONFIG_DIR",
    "JUPYTER_DATA_DIR",
    "JUPYTER_RUNTIME_DIR",
    "IPYTHONDIR",
    "JUPYTERLAB_SETTINGS_DIR",
    "JUPYTERLAB_WORKSPACES_DIR",
    "XDG_CONFIG_HOME",
    "XDG_CACHE_HOME",
)


def pytest_collection_modifyitems(config, items):
    if os.environ.get("MLLM_LENS_SKIP_E2E") == "1":
        skip = pytest.mark.skip(reason="MLLM_LENS_SKIP_E2E=1")
        for item in items:
            if "e2e" in str(item.fspath):
                item.add_marker(skip)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    def __init__(self, root: Path, url: str, token: str, proc: subprocess.Popen, log: Path) -> None:
        self.root, self.url, self.token, self.proc, self.log = root, url, token, proc, log

    def get(self, path: str, method: str = "GET") -> bytes:
        req = urllib.request.Request(
            f"{self.url}{path}", method=method, headers={"Authorization": f"token {self.token}"}
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.read()


@pytest.fixture(scope="session")
def jupyter(tmp_path_factory) -> Server:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: run `bash .ci/e2e_setup.sh` (apt-get install -y chromium)")
    home = tmp_path_factory.mktemp("jupyter_home")
    root = tmp_path_factory.mktemp("notebooks")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    for name in JUPYTER_DIRS:
        (home / name).mkdir()
        env[name] = str(home / name)
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONWARNINGS="ignore")  # 1 thread: the CPU is shared
    notification = home / "JUPYTERLAB_SETTINGS_DIR" / "@jupyterlab" / "apputils-extension"
    notification.mkdir(parents=True)
    (notification / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False})
    )
    token, port = secrets.token_hex(16), _free_port()
    log = home / "server.log"
    cmd = [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
           f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}", "--ServerApp.port_retries=0",
           "--LabApp.news_url="]  # fmt: skip
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    server = Server(root, f"http://127.0.0.1:{port}", token, proc, log)
    try:
        deadline = time.monotonic() + patient(90_000) / 1000
        while True:
            try:
                server.get("/api/status")
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"JupyterLab did not answer /api/status within {patient(90_000) / 1000:.0f} s:\n"
                        f"{log.read_text()[-3000:]}"
                    ) from None
                time.sleep(0.5)
        yield server
    finally:
        try:
            server.get("/api/shutdown", method="POST")  # also shuts its kernels down
            proc.wait(timeout=20)
        except Exception:  # noqa: BLE001 - fall through to the kill below
            pass
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import sync_playwright

    (Path(__file__).parent / "screenshots").mkdir(exist_ok=True)
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.errors = []
    page.on("pageerror", lambda err: page.errors.append(f"{err}\n{err.stack or ''}"))
    page.set_default_timeout(patient(60_000))
    yield page
    context.close()
