"""Drive a real JupyterLab in headless Chromium from pytest.

`lab_server(folder)` starts `jupyter lab` on a free localhost port with a real token, isolated config/data/runtime
folders and quiet logs; `open_notebook(browser, server, name)` gives a Playwright page with the notebook open and its
kernel idle; `run_all_cells`, `click_button`, `widget_text`, `cell_output_text`, `wait_text` and `screenshot` drive and
read it. `missing_browser_reason()` says why a browser test cannot run here (no playwright, no /usr/bin/chromium), so
tests can `pytest.skip` with it. Shutdown asks the server to stop its kernels, then kills the server's process group
and any kernel left behind (kernels run in their own sessions, so the group kill alone would orphan them).
"""
from __future__ import annotations

import contextlib, json, os, secrets, signal, socket, subprocess, sys, time, urllib.request
from dataclasses import dataclass, field
from pathlib import Path

CHROMIUM = os.environ.get("SENTINEL_CHROMIUM", "/usr/bin/chromium")
SHOTS = Path(os.environ.get("SENTINEL_LAB_SHOTS", "/tmp/lab_shots"))


def missing_browser_reason() -> str | None:
    "Why a browser test cannot run here, or None when it can."
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed: `pip install playwright` (no browser download needed; Debian's chromium is used)"
    if not Path(CHROMIUM).exists():
        return f"no Chromium at {CHROMIUM}: `apt-get install chromium`, or set SENTINEL_CHROMIUM to a Chromium binary"
    try:
        import jupyterlab, ipywidgets  # noqa: F401
    except ImportError as err:
        return f"{err.name} is not installed: `pip install jupyterlab ipywidgets`"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_notebook(path, cells: list[str]) -> Path:
    "Write an nbformat-4 notebook of code cells (python3 kernel) to `path`."
    nb = {"cells": [{"cell_type": "code", "execution_count": None, "id": f"c{i}", "metadata": {}, "outputs": [],
                     "source": src} for i, src in enumerate(cells)],
          "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
                       "language_info": {"name": "python"}},
          "nbformat": 4, "nbformat_minor": 5}
    path = Path(path)
    path.write_text(json.dumps(nb, indent=1))
    return path


@dataclass
class LabServer:
    root: Path
    port: int
    token: str
    proc: subprocess.Popen
    log_path: Path
    startup_s: float = 0.0
    kernel_pids: set = field(default_factory=set)
    pages: int = 0

    @property
    def url(self) -> str: return f"http://127.0.0.1:{self.port}"

    def api(self, path: str, method: str = "GET", data: bytes | None = None, timeout: float = 5):
        req = urllib.request.Request(f"{self.url}{path}", method=method, data=data,
                                     headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            body = r.read()
        return json.loads(body) if body else None

    def log_tail(self, n: int = 40) -> str:
        try: return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError: return ""

    def _children(self) -> set[int]:
        try:
            import psutil
            return {c.pid for c in psutil.Process(self.proc.pid).children(recursive=True)}
        except Exception:
            return set()

    def stop(self, timeout: float = 10):
        "Stop kernels through the API, then the server's process group; kill leftover kernels by pid."
        if self.proc.poll() is None: self.kernel_pids |= self._children()
        with contextlib.suppress(Exception): self.api("/api/shutdown", method="POST", data=b"")
        with contextlib.suppress(subprocess.TimeoutExpired): self.proc.wait(timeout)
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError): os.killpg(self.proc.pid, signal.SIGTERM)
            try: self.proc.wait(5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError): os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        for pid in self.kernel_pids:  # kernels live in their own sessions: the group kill does not reach them
            with contextlib.suppress(ProcessLookupError, PermissionError): os.kill(pid, signal.SIGKILL)


def start_lab(root, timeout: float = 60) -> LabServer:
    "Start `jupyter lab` serving `root` on a free 127.0.0.1 port with a random token; wait until it answers."
    root = Path(root).resolve()
    home = root / ".lab_home"
    env = dict(os.environ)
    for name in ("config", "data", "runtime"):
        (home / name).mkdir(parents=True, exist_ok=True)
    # isolated config: no user settings, no announcements/news fetch, no update check (nothing outside can be reached)
    (home / "config" / "labconfig").mkdir(exist_ok=True)
    (home / "config" / "labconfig" / "page_config.json").write_text(json.dumps(
        {"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": True}}))
    env.update(JUPYTER_CONFIG_DIR=str(home / "config"), JUPYTER_DATA_DIR=str(home / "data"),
               JUPYTER_RUNTIME_DIR=str(home / "runtime"), IPYTHONDIR=str(home / "ipython"),
               OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "1"), PYTHONUNBUFFERED="1")
    port, token = free_port(), secrets.token_urlsafe(24)
    log_path = home / "lab.log"
    cmd = [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ServerApp.ip=127.0.0.1",
           f"--ServerApp.port={port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
           f"--ServerApp.root_dir={root}", "--LabApp.expose_app_in_browser=True", "--LabApp.news_url=None",
           "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
           f"--LabApp.workspaces_dir={home / 'workspaces'}", "--ServerApp.log_level=WARN",
           "--ServerApp.terminals_enabled=False", "--KernelSpecManager.ensure_native_kernel=True"]
    if hasattr(os, "geteuid") and os.geteuid() == 0: cmd.append("--allow-root")  # CI containers run as root
    t0 = time.perf_counter()
    log = open(log_path, "w")
    proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    server = LabServer(root, port, token, proc, log_path)
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"jupyter lab exited with code {proc.returncode}; log:\n{server.log_tail()}")
        try:
            server.api("/api/status", timeout=2)
            break
        except Exception:
            if time.monotonic() > deadline:
                server.stop()
                raise TimeoutError(f"jupyter lab did not answer within {timeout}s; log:\n{server.log_tail()}")
            time.sleep(0.25)
    server.startup_s = time.perf_counter() - t0
    return server


@contextlib.contextmanager
def lab_server(root, timeout: float = 60):
    "Context manager around `start_lab`; always stops the server and its kernels."
    server = start_lab(root, timeout)
    try: yield server
    finally: server.stop()


@contextlib.contextmanager
def chromium(headless: bool = True):
    "A Playwright Chromium browser from the system binary (no browser download)."
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=headless,
                                    args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        try: yield browser
        finally: browser.close()


def kernel_status(page) -> str:
    "The open notebook's kernel status ('idle', 'busy', 'starting', ...; 'none' when there is no kernel yet)."
    return page.evaluate("""() => { const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;
        const k = w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel;
        return k ? k.status : 'none'; }""")


def wait_kernel_idle(page, timeout: float = 60, settle: float = 0.3):
    "Wait until the kernel reports idle and stays idle for `settle` seconds."
    deadline, idle_since = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        if kernel_status(page) == "idle":
            idle_since = idle_since or time.monotonic()
            if time.monotonic() - idle_since >= settle: return
        else: idle_since = None
        time.sleep(0.05)
    raise TimeoutError(f"kernel not idle after {timeout}s (status {kernel_status(page)!r})")


def open_notebook(browser, server: LabServer, name: str, timeout: float = 60, viewport=(1300, 1000)):
    """A new page with notebook `name` (relative to the server root) open and its kernel idle. Each page gets a
    fresh workspace, so notebooks opened by earlier pages are not restored into it."""
    page = browser.new_page(viewport={"width": viewport[0], "height": viewport[1]})
    page.set_default_timeout(timeout * 1000)
    server.pages += 1
    page.goto(f"{server.url}/lab/workspaces/test{server.pages}/tree/{name}?reset&token={server.token}")
    page.wait_for_function("(name) => { const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;"
                           " return w && w.context && w.context.path === name && w.sessionContext; }",
                           arg=name, timeout=timeout * 1000)
    page.evaluate("() => window.jupyterapp.shell.currentWidget.sessionContext.ready")
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=timeout * 1000)
    wait_kernel_idle(page, timeout)
    server.kernel_pids |= server._children()
    return page


def run_command(page, command: str, args: dict | None = None, wait: bool = False):
    """Execute a JupyterLab command (e.g. 'notebook:run-all-cells') as the menus do. With `wait`, wait for the
    command's promise (for run commands: until the cells have run); without, return at once."""
    js = "([c, a]) => window.jupyterapp.commands.execute(c, a)" if wait else \
         "([c, a]) => { window.jupyterapp.commands.execute(c, a); }"
    page.evaluate(js, [command, args or {}])


def run_all_cells(page, timeout: float = 60, wait: bool = True):
    "Run all cells (the Run ▸ Run All Cells command) and, with `wait`, wait until every cell has run."
    n = page.locator(".jp-Notebook .jp-CodeCell").count()
    run_command(page, "notebook:run-all-cells")
    if wait:
        page.wait_for_function("""(n) => { const p = [...document.querySelectorAll('.jp-Notebook .jp-CodeCell .jp-InputPrompt')];
            return p.length === n && p.every(e => /\\[\\d+\\]/.test(e.textContent)); }""", arg=n, timeout=timeout * 1000)
        wait_kernel_idle(page, timeout)


def run_cell(page, index: int, wait: bool = False):
    """Select cell `index` (0-based) and run it; with `wait`, until it has run, else return at once (a click or
    another cell can then be sent while it runs)."""
    page.evaluate("""(i) => { const nb = window.jupyterapp.shell.currentWidget.content; nb.activeCellIndex = i; }""", index)
    run_command(page, "notebook:run-cell", wait=wait)


def cell(page, index: int):
    "Locator for cell `index` (0-based)."
    return page.locator(".jp-Notebook .jp-Cell").nth(index)


def cell_output_text(page, index: int) -> str:
    "All text in cell `index`'s output area."
    return cell(page, index).locator(".jp-OutputArea").inner_text()


def button(page, description: str):
    "Locator for the ipywidgets Button whose description is exactly `description`."
    return page.locator(".jupyter-widgets.widget-button, .jupyter-button").filter(
        has_text=description).get_by_text(description, exact=True).first


def click_button(page, description: str) -> float:
    "Click the widget button labelled `description`; returns the browser time (performance.now ms) of the click."
    b = button(page, description)
    b.wait_for(state="visible")
    t = page.evaluate("() => performance.now()")
    b.click()
    return t


def widget_text(page, selector: str) -> str:
    "Text of the first element matching `selector` (e.g. a widget's `add_class` name, '.probe-status')."
    return page.locator(selector).first.text_content() or ""


def wait_text(page, selector: str, pattern: str, timeout: float = 30) -> float:
    "Wait until an element matching `selector` has text matching the JS regex `pattern`; returns performance.now()."
    return page.wait_for_function("""([s, p]) => { const e = document.querySelector(s);
        return e && new RegExp(p).test(e.textContent) ? performance.now() : false; }""",
                                  arg=[selector, pattern], timeout=timeout * 1000).json_value()


def watch_text(page, selectors: dict[str, str]):
    "Record (performance.now, text) each time an element matching a selector changes text; read with `watched`."
    page.evaluate("""(sels) => { window.__watch = {}; for (const [k, s] of Object.entries(sels)) {
        const log = window.__watch[k] = []; let last = null;
        const check = () => { const e = document.querySelector(s); const t = e ? e.textContent : null;
                              if (t !== last) { last = t; log.push([performance.now(), t]); } };
        new MutationObserver(check).observe(document.body, {subtree: true, childList: true, characterData: true});
        check(); } }""", selectors)


def watched(page) -> dict[str, list]:
    "The change log of `watch_text`: {name: [[ms, text], ...]}."
    return page.evaluate("() => window.__watch")


def screenshot(page, name: str, folder: Path | None = None) -> Path:
    "Full-page screenshot to `folder` (default /tmp/lab_shots or $SENTINEL_LAB_SHOTS) as `name`.png."
    folder = Path(folder or SHOTS)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
