"""The learner's path in a real browser: JupyterLab opens the learner notebooks.

The learner notebooks are those a build wrote (``$BNBOOK_HTML/learner``, which ``make
test`` sets, else ``_build/html/learner``). A JupyterLab server starts headless on
127.0.0.1 (a free port, a token, and its own config, data, runtime, settings and
workspace folders) on copies of them; the system Chromium, driven by Playwright, opens

- every learner notebook, rendered, and checks that no MyST role, directive or label is
  left in any rendered Markdown cell, that every solution is folded (a closed
  ``<details>``, nothing of it visible), that its images and math render, that the
  code the web page hides is folded, and that no output of the build shows a folder of
  the machine that built it (a screenshot of each is kept);
- ``RUN`` of them (``00_setup`` and chapter 3, in quick mode, about 1.5 minutes;
  ``BNBOOK_LAB_RUN=all`` runs every chapter: 18 minutes on a busy 2-core machine, so
  ``make test`` leaves it out), runs all cells, and checks through JupyterLab's
  own state (its notebook model, the kernel's status) and the rendered page:
  every code cell ran and none has an error output (cells tagged ``raises-exception``
  excepted, as under nbval); each "Your turn" stub is still a stub: its checker says
  "not implemented", not "passed", and at the end its name still holds the stub (asked
  of the kernel), so "Run all" ran no solution; the setup cell installed nothing (bnutils was
  importable; an install attempt would fail here, as the install source does not exist
  and pip may not use the index); every figure rendered (one loaded ``<img>`` per
  ``image/png`` output); a progress widget appeared and completed (a green bar, with
  its rate and ETA), and no bar was left unfinished.

No request may leave 127.0.0.1 (Chromium resolves no other host; JupyterLab's news,
update check and PyPI extension manager are turned off). The server, its kernels and the
browser are shut down at the end, also on failure, and the test fails if any of them
outlives the shutdown. Skipped, with the reason in the test summary, where there is no
Chromium (``BNBOOK_CHROMIUM`` names another), or where no build wrote learner notebooks
and ``BNBOOK_HTML`` is not set (with it set, missing notebooks fail the test).
"""

import ast
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "book" / "_ext"))
import learner  # noqa: E402

CHROMIUM = os.environ.get("BNBOOK_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run",
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"]
HTML = os.environ.get("BNBOOK_HTML")
LEARNER = (Path(HTML) if HTML else ROOT / "_build" / "html") / "learner"
NOTEBOOKS = sorted(p.name for p in LEARNER.glob("*.ipynb"))
# Run all: the setup notebook and a short chapter with two "Your turn" stubs that
# trains (progress bars) and plots; BNBOOK_LAB_RUN=all: every chapter.
LIVE = ("00_setup.ipynb", "03_backprop.ipynb")  # these show progress bars
RUN = NOTEBOOKS if os.environ.get("BNBOOK_LAB_RUN") == "all" else [
    n for n in NOTEBOOKS if n in LIVE]
RUN_TIMEOUT_S = 1800  # one notebook in quick mode: generous, a loaded machine is slow
STUB = 'raise NotImplementedError("your code here")'

pytestmark = [
    pytest.mark.skipif(
        not Path(CHROMIUM).exists(),
        reason=f"JupyterLab browser test skipped: no Chromium at {CHROMIUM} (Debian: "
               f"apt-get install chromium; or set BNBOOK_CHROMIUM)"),
    pytest.mark.skipif(
        not NOTEBOOKS and not HTML,
        reason=f"JupyterLab browser test skipped: no learner notebooks in {LEARNER} "
               f"(make book writes them; or set BNBOOK_HTML to a built book)"),
]


def test_a_build_wrote_the_learner_notebooks():
    chapters = sorted(p.name for p in (ROOT / "notebooks").glob("*.ipynb"))
    assert NOTEBOOKS == chapters, f"learner notebooks in {LEARNER}: {NOTEBOOKS}"

# JupyterLab settings for the test: nothing fetched from the internet, nothing written
# back to the notebooks, and every cell attached to the page (not only those in view).
SETTINGS = {
    "@jupyterlab/apputils-extension/notification": {"fetchNews": "false",
                                                    "checkForUpdates": False},
    "@jupyterlab/docmanager-extension/plugin": {"autosave": False},
    "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none"},
}


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url, token, method="GET", timeout=5):
    req = urllib.request.Request(url, method=method,
                                 headers={"Authorization": f"token {token}"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read() or b"null")


def _log_tail(log, n=4000):
    return log.read_text(errors="replace")[-n:] if log.exists() else "(no log)"


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A JupyterLab server on 127.0.0.1 serving copies of the notebooks; yields its base
    URL and token. Teardown: the server's shutdown API (kernels included), then any
    process of its tree that survived is killed and reported as an error."""
    import psutil

    tmp = tmp_path_factory.mktemp("lab")
    root = tmp / "notebooks"  # copies: JupyterLab never writes to the repository's files
    root.mkdir()
    for name in NOTEBOOKS:
        shutil.copy(LEARNER / name, root / name)
    for plugin, values in SETTINGS.items():
        path = tmp / "settings" / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    port, token = _free_port(), secrets.token_hex(16)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("JUPYTER", "BNBOOK_", "PIP_", "MPLBACKEND", "IPYTHON"))}
    env.update(
        JUPYTER_CONFIG_DIR=str(tmp / "config"), JUPYTER_DATA_DIR=str(tmp / "data"),
        JUPYTER_RUNTIME_DIR=str(tmp / "runtime"), IPYTHONDIR=str(tmp / "ipython"),
        JUPYTERLAB_SETTINGS_DIR=str(tmp / "settings"),
        JUPYTERLAB_WORKSPACES_DIR=str(tmp / "workspaces"),
        BNBOOK_QUICK="1", BNBOOK_PROGRESS="live",  # a person watches: live bars
        OMP_NUM_THREADS="1",  # as the notebooks under nbval: no threads spinning on 2 cores
        BNUTILS_RESULTS=str(tmp / "results"),  # an empty cache: the chapter trains
        BNUTILS_INSTALL_SOURCE=str(tmp / "no-such-source"), PIP_NO_INDEX="1",
    )
    log = tmp / "server.log"
    command = [
        sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
        "--ServerApp.terminals_enabled=False", "--ServerApp.allow_root=True",
        "--LabApp.expose_app_in_browser=True",
        "--LabApp.news_url=None", "--LabApp.extension_manager=readonly",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
    ]
    with open(log, "wb") as out:
        server = subprocess.Popen(command, cwd=root, env=env, stdout=out,
                                  stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                  start_new_session=True)
    base = f"http://127.0.0.1:{port}/"
    tree = psutil.Process(server.pid)
    seen = {tree}
    try:
        deadline = time.monotonic() + 90
        while True:
            assert server.poll() is None, f"JupyterLab exited:\n{_log_tail(log)}"
            try:
                _get(base + "api/status", token)
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                assert time.monotonic() < deadline, f"JupyterLab did not start:\n{_log_tail(log)}"
                time.sleep(0.5)
        yield {"base": base, "token": token, "log": log}
    finally:
        seen.update(_descendants(tree))
        try:
            _get(base + "api/shutdown", token, method="POST")
        except (OSError, ValueError):
            pass
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        survivors = [p for p in seen if _alive(p)]
        for p in survivors:
            p.kill()
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=10)
        assert not survivors, f"still running after JupyterLab's shutdown: {survivors}"


def _descendants(process):
    import psutil

    try:
        return set(process.children(recursive=True))
    except psutil.NoSuchProcess:
        return set()


def _alive(process):
    import psutil

    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


# JupyterLab's state, read through the app it exposes (--LabApp.expose_app_in_browser).
NOTEBOOK_READY = """(path) => {
    const app = window.jupyterapp;
    const w = app && app.shell.currentWidget;
    const kernel = w && w.sessionContext && w.sessionContext.session
        && w.sessionContext.session.kernel;
    return Boolean(w && w.context && w.context.path === path && w.context.isReady
        && w.content.widgets.length && kernel && kernel.status === 'idle'
        && kernel.connectionStatus === 'connected');
}"""
RUN_ALL = """() => {
    window.bnRun = null;
    window.jupyterapp.commands.execute('notebook:run-all-cells').then(
        ok => { window.bnRun = {ok: ok}; }, e => { window.bnRun = {error: String(e)}; });
}"""
KERNEL_IDLE = """() => window.jupyterapp.shell.currentWidget.sessionContext.session.kernel.status
    === 'idle'"""
NOTEBOOK_JSON = "() => window.jupyterapp.shell.currentWidget.content.model.toJSON()"
# runs code in the notebook's kernel, returns what it printed (and any error)
IN_KERNEL = """async (code) => {
    const kernel = window.jupyterapp.shell.currentWidget.sessionContext.session.kernel;
    const future = kernel.requestExecute({code: code, silent: false, store_history: false});
    let out = '';
    future.onIOPub = (msg) => {
        if (msg.header.msg_type === 'stream') out += msg.content.text;
        if (msg.header.msg_type === 'error') out += msg.content.ename + ': ' + msg.content.evalue;
    };
    await future.done;
    return out;
}"""
# True for each name still bound to its stub (a function, or a class with a method, whose
# code raises NotImplementedError("your code here"))
STILL_STUBS = """import json as _json
def _stub(obj):
    fns = [obj] if hasattr(obj, "__code__") else [
        v for v in vars(obj).values() if hasattr(v, "__code__")]
    return any("your code here" in f.__code__.co_consts for f in fns)
print(_json.dumps({n: _stub(globals()[n]) for n in NAMES}))"""
PAGE_STATE = """async () => {
    const node = window.jupyterapp.shell.currentWidget.node;
    const imgs = Array.from(node.querySelectorAll('.jp-OutputArea-output img'));
    await Promise.all(imgs.map(i => i.decode().catch(() => null)));
    const bars = Array.from(node.querySelectorAll('.widget-hprogress, .widget-vprogress'), bar => ({
        style: bar.querySelector('.progress-bar').className,
        label: (bar.closest('.widget-hbox') || bar).textContent}));
    return {images: imgs.map(i => i.naturalWidth), bars: bars};
}"""


# What a learner sees of the Markdown cells: the text outside math and code, code blocks
# whose language is a MyST directive, folded blocks, images, math, folded code cells.
RENDERED = """async () => {
    const nb = window.jupyterapp.shell.currentWidget;
    const out = {texts: [], fences: [], unrendered: 0, details: [], images: [], math: 0,
                 mathErrors: 0, folded: 0};
    for (const cell of nb.content.widgets) {
        if (cell.model.type !== 'markdown') continue;
        const r = cell.node.querySelector('.jp-RenderedMarkdown');
        if (!cell.rendered || !r) { out.unrendered += 1; continue; }
        out.fences.push(...Array.from(r.querySelectorAll('pre code, pre'), c => c.className)
                        .filter(c => c.includes('{')));
        out.math += r.querySelectorAll('mjx-container').length;
        out.mathErrors += r.querySelectorAll('mjx-merror').length;
        for (const d of r.querySelectorAll('details')) {
            const summary = d.querySelector('summary');
            const shown = Array.from(d.children).filter(
                e => e !== summary && e.checkVisibility());
            out.details.push({summary: summary ? summary.textContent.trim() : '',
                              open: d.open, shown: shown.length});
        }
        const imgs = Array.from(r.querySelectorAll('img'));
        await Promise.all(imgs.map(i => i.decode().catch(() => null)));
        out.images.push(...imgs.map(i => i.naturalWidth));
        const clone = r.cloneNode(true);
        clone.querySelectorAll('mjx-container, code, pre, script').forEach(e => e.remove());
        out.texts.push(clone.textContent);
    }
    out.folded = nb.node.querySelectorAll('.jp-Cell .jp-InputPlaceholder').length;
    return out;
}"""
RAW_MYST = re.compile(r"\{[A-Za-z][\w:+.-]*\}|^\([\w-]+\)=|\((?:eq|fig|ex)-[\w-]+\)", re.M)


def _open(lab, browser, notebook):
    """A tab on ``notebook``, ready; the list of requests that left 127.0.0.1 and of
    page errors, filled as the tab lives."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    tab = context.new_page()
    outside, problems = [], []
    tab.on("request", lambda r: outside.append(r.url)
           if not r.url.startswith((lab["base"], "data:", "blob:")) else None)
    tab.on("websocket", lambda ws: outside.append(ws.url)
           if not ws.url.startswith(lab["base"].replace("http", "ws")) else None)
    tab.on("pageerror", lambda e: problems.append(f"uncaught: {e}"))
    tab.goto(f"{lab['base']}lab/tree/{notebook}?reset&token={lab['token']}")
    tab.wait_for_function(NOTEBOOK_READY, arg=notebook, timeout=120_000, polling=250)
    return context, tab, outside, problems


def _keep_for_a_look(lab, tab, notebook):
    kept = ROOT / "_build" / "lab"  # for a look after a failure (CI keeps _build)
    kept.mkdir(parents=True, exist_ok=True)
    tab.screenshot(path=str(kept / f"{notebook}.png"), full_page=True)
    shutil.copy(lab["log"], kept / "server.log")
    print(f"screenshot and server log in {kept}")


@pytest.mark.parametrize("notebook", NOTEBOOKS)
def test_learner_notebook_reads_in_jupyterlab(lab, browser, notebook):
    """What a learner sees on opening the notebook, before running anything."""
    stored = json.loads((LEARNER / notebook).read_text())
    text = ["".join(c["source"]) for c in stored["cells"] if c["cell_type"] == "markdown"]
    solutions = sum(t.count("<summary>Solution") for t in text)
    folded = sum(bool(c["metadata"].get("jupyter", {}).get("source_hidden"))
                 for c in stored["cells"])
    errors = [c for c in stored["cells"] for o in c.get("outputs", [])
              if o["output_type"] == "error"]
    assert not errors, f"{notebook}: error outputs stored from the build"
    context, tab, outside, problems = _open(lab, browser, notebook)
    try:
        tab.wait_for_function(
            "() => window.jupyterapp.shell.currentWidget.content.widgets.every("
            "c => c.model.type !== 'markdown' || c.rendered)", timeout=60_000, polling=250)
        if any("$" in t for t in text):  # MathJax typesets after the Markdown renders
            tab.wait_for_function(
                "() => window.jupyterapp.shell.currentWidget.node.querySelector("
                "'.jp-RenderedMarkdown mjx-container')", timeout=60_000, polling=250)
            time.sleep(2)
        seen = tab.evaluate(RENDERED)
        raw = sorted({m.group(0) for t in seen["texts"] for m in RAW_MYST.finditer(t)})
        assert not raw and not seen["fences"], \
            f"{notebook}: MyST shows raw in the rendered Markdown: {raw + seen['fences']}"
        assert seen["unrendered"] == 0, f"{notebook}: Markdown cells not rendered"
        assert "Learner notebook." in seen["texts"][0], "no note on the book's numbers"
        shown = [d for d in seen["details"] if d["open"] or d["shown"]]
        assert not shown, f"{notebook}: folded blocks showing before a click: {shown}"
        titled = [d for d in seen["details"] if d["summary"].startswith("Solution")]
        assert len(titled) == solutions, (len(titled), solutions)
        if notebook != "00_setup.ipynb":
            assert solutions >= 1, f"{notebook}: no folded solution"
        assert all(w > 0 for w in seen["images"]), f"{notebook}: images not loaded"
        assert seen["mathErrors"] == 0, f"{notebook}: MathJax errors"
        if any("$" in t for t in text):
            assert seen["math"] > 0, f"{notebook}: no math typeset"
        assert seen["folded"] == folded, \
            f"{notebook}: {seen['folded']} folded code cells shown folded, of {folded}"
        shots = LEARNER.parent.parent / "screenshots"
        shots.mkdir(exist_ok=True)
        tab.screenshot(path=str(shots / f"lab__{Path(notebook).stem}.png"))
    except Exception:
        _keep_for_a_look(lab, tab, notebook)
        raise
    finally:
        context.close()
    assert not outside, f"{notebook}: requests leaving 127.0.0.1: {outside}"
    assert not problems, f"{notebook}: errors in the page: {problems}"
    print(f"{notebook}: {len(text)} Markdown cells, {solutions} folded solutions, "
          f"{folded} folded code cells, {seen['math']} formulas, {len(seen['images'])} images")
    paths = learner.machine_paths(stored)
    assert not paths, (f"{notebook}: outputs show folders of the build machine (print "
                       f"them relative to ~ or the repository, or hide them): {paths[:5]}")


@pytest.mark.parametrize("notebook", RUN)
def test_notebook_runs_in_jupyterlab(lab, browser, notebook):
    context, tab, outside, problems = _open(lab, browser, notebook)
    try:
        started = time.monotonic()
        tab.evaluate(RUN_ALL)
        tab.wait_for_function("() => window.bnRun !== null", timeout=RUN_TIMEOUT_S * 1000,
                              polling=250)
        tab.wait_for_function(KERNEL_IDLE, timeout=60_000, polling=250)
        seconds = time.monotonic() - started
        nb = tab.evaluate(NOTEBOOK_JSON)
        cells = [c for c in nb["cells"] if c["cell_type"] == "code"]
        for i, cell in enumerate(cells):
            if "raises-exception" in cell["metadata"].get("tags", []):
                continue
            errors = [o for o in cell["outputs"] if o["output_type"] == "error"]
            assert not errors, (f"{notebook}, code cell {i}: {errors[0]['ename']}: "
                                f"{errors[0]['evalue']}\n{''.join(cell['source'])[:400]}")
            assert cell["execution_count"] is not None, f"{notebook}, code cell {i} did not run"
        # (not window.bnRun's value: a raises-exception cell makes "run all" report false)

        # "Run all" ran no solution: each "Your turn" stub is still a stub
        for i, cell in enumerate(cells):
            if STUB not in "".join(cell["source"]):
                continue
            checker = next((c for c in cells[i + 1:] if "check." in "".join(c["source"])),
                           None)
            assert checker is not None, f"{notebook}: no checker after stub {i}"
            said = "".join(o.get("text", "") for o in checker["outputs"])
            assert "not implemented" in said and ": passed" not in said, \
                f"{notebook}: the checker after stub {i} says {said[:300]!r}"

        # ... and after "Run all" the stubs' names still hold the stubs, not a solution's
        stubs = sorted({node.name for c in cells if STUB in "".join(c["source"])
                        for node in ast.parse("".join(c["source"])).body
                        if isinstance(node, (ast.FunctionDef, ast.ClassDef))})
        if stubs:
            said = tab.evaluate(IN_KERNEL, STILL_STUBS.replace("NAMES", repr(stubs)))
            assert json.loads(said) == dict.fromkeys(stubs, True), \
                f"{notebook}: after Run all, a stub was replaced: {said}"

        # the setup cell (the first code cell) found bnutils and installed nothing
        assert "find_spec(\"bnutils\")" in "".join(cells[0]["source"])
        assert cells[0]["outputs"] == [], f"the setup cell printed: {cells[0]['outputs']}"

        outputs = [o for c in cells for o in c["outputs"]]
        n_png = sum("image/png" in o.get("data", {}) for o in outputs)
        n_widgets = sum("application/vnd.jupyter.widget-view+json" in o.get("data", {})
                        for o in outputs)
        assert n_png >= 1, f"{notebook}: no figure"
        if notebook in LIVE:
            assert n_widgets >= 1, f"{notebook}: no progress widget in the outputs"
        tab.wait_for_function(
            "(n) => window.jupyterapp.shell.currentWidget.node.querySelectorAll("
            "'.jp-OutputArea-output img').length >= n", arg=n_png, timeout=30_000, polling=250)
        state = tab.evaluate(PAGE_STATE)
        assert len(state["images"]) == n_png and all(w > 0 for w in state["images"]), \
            f"{notebook}: figures not rendered: widths {state['images']} of {n_png} figures"
        done = [b for b in state["bars"] if "progress-bar-success" in b["style"]]
        assert done or notebook not in LIVE, \
            f"{notebook}: no completed progress bar rendered: {state['bars']}"
        for bar in done:
            # tqdm's label: n/total [elapsed<remaining, rate] (its spaces are U+2007); the
            # rate of a slow loop reads s/it
            assert re.search(r"(\d+)/\1\s\[[\d:]+<[\d:]+,\s*[\d.]+\s?([a-z]+/s|s/[a-z]+)\]",
                             bar["label"]), bar
        # a loop that stopped early shows a red bar; none may be left unfinished
        unfinished = [b for b in state["bars"] if not re.search("success|danger", b["style"])]
        assert not unfinished, f"{notebook}: progress bars never closed: {unfinished}"
        if notebook == "00_setup.ipynb":
            printed = "".join(o.get("text", "") for o in outputs)
            assert "within the tested range" in printed, printed[-2000:]
    except Exception:
        _keep_for_a_look(lab, tab, notebook)
        raise
    finally:
        context.close()

    assert not outside, f"{notebook}: requests leaving 127.0.0.1: {outside}"
    assert not problems, f"{notebook}: errors in the page: {problems}"
    print(f"{notebook}: {len(cells)} code cells in {seconds:.0f} s, {n_png} figures, "
          f"{len(state['bars'])} progress bars, stubs still stubs: {stubs}")


def test_server_reached_no_other_host(lab):
    """JupyterLab's server log names no URL off 127.0.0.1 (news, update checks, PyPI)."""
    log = lab["log"].read_text(errors="replace")
    assert "Kernel started" in log, "the notebooks did not start a kernel"
    elsewhere = re.findall(r"https?://(?!127\.0\.0\.1[:/])[^\s'\"]+", log)
    assert not elsewhere, f"the server log names other hosts: {elsewhere}"
