"""The documentation site: it builds strictly, works offline, and its examples are true.

* ``mkdocs build --strict`` succeeds, and the built site loads nothing from a CDN;
* every Python block marked ``<!-- runnable -->`` in ``docs/**/*.md`` runs (fresh namespace, empty
  temporary working directory, time limit);
* every YAML example's ``class_path`` imports and its ``init_args`` are arguments of that class;
  complete configs, and every documented ``python -m gddim_lightning ...`` line, parse with the CLI
  (``--print_config``);
* every formula reached the math extension (no delimiters left in the built HTML);
* in headless Chromium (skipped without ``chromium``): pages load with no console error and no
  request outside the site, and every formula is typeset by the vendored KaTeX.

The conventions are described in ``docs/contributing.md``.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import inspect
import io
import json
import os
import queue
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"
RUNNABLE_MARK = "<!-- runnable -->"
BLOCK_TIMEOUT_S = 60
# Example class paths that stand for the reader's own code.
PLACEHOLDER_PREFIXES = ("my_package.",)
# Hosts that would make the site depend on the network at view time.
CDN_PATTERN = re.compile(r"cdn\.|googleapis|gstatic|jsdelivr|unpkg|cdnjs|fonts\.bunny")
# Material's bundle carries two lazy-loaded URLs it only uses for mermaid diagrams (none here) and
# a ResizeObserver polyfill for old browsers; anything else there is new and fails the test.
THEME_BUNDLE_ALLOWED = {"https://unpkg.com/mermaid", "https://unpkg.com/resize-observer-polyfill"}


# ------------------------------------------------------------------------------ Markdown parsing
@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # 1-based line of the first code line
    lang: str
    code: str
    runnable: bool

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(DOCS).as_posix()}:{self.line}"


_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")


def fenced_blocks(path: Path) -> list[Block]:
    """Top-level fenced code blocks of a Markdown file (fences nested in a longer fence are text)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks, i, previous = [], 0, ""
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            if lines[i].strip():
                previous = lines[i].strip()
            i += 1
            continue
        fence, indent = m["fence"], len(m["indent"])
        lang = m["info"].strip().split(" ")[0].strip("{}.").lower()
        body, j = [], i + 1
        while j < len(lines):
            close = _FENCE.match(lines[j])
            if close and close["fence"][0] == fence[0] and len(close["fence"]) >= len(fence) and not close["info"].strip():
                break
            body.append(lines[j][indent:] if lines[j][:indent].strip() == "" else lines[j])
            j += 1
        blocks.append(Block(path, i + 2, lang, "\n".join(body) + "\n", previous == RUNNABLE_MARK))
        previous, i = "", j + 1
    return blocks


BLOCKS = [b for p in sorted(DOCS.rglob("*.md")) for b in fenced_blocks(p)]
RUNNABLE = [b for b in BLOCKS if b.runnable]
YAML_BLOCKS = [b for b in BLOCKS if b.lang in ("yaml", "yml")]


def test_markdown_parser_sees_the_examples():
    assert RUNNABLE, "no <!-- runnable --> block found in docs/"
    assert all(b.lang == "python" for b in RUNNABLE), [b.id for b in RUNNABLE if b.lang != "python"]
    # the example of the convention inside a ````markdown fence in contributing.md is not run
    assert not any(b.path.name == "contributing.md" for b in RUNNABLE)
    assert YAML_BLOCKS


# ------------------------------------------------------------------------------ the build
def _mkdocs_env() -> dict[str, str]:
    return {**os.environ, "NO_MKDOCS_2_WARNING": "1", "PYTHONPATH": str(REPO)}


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    try:
        import material  # noqa: F401
        import mkdocstrings  # noqa: F401
    except ImportError as err:
        pytest.fail(f"the docs toolchain is missing ({err}); install it with pip install -e '.[dev]'")
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=REPO, env=_mkdocs_env(), capture_output=True, text=True, timeout=180,
    )
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return out


def _nav_pages(node) -> list[str]:
    if isinstance(node, str):
        return [node]
    items = node.values() if isinstance(node, dict) else node
    return [page for item in items for page in _nav_pages(item)]


def test_build_strict(site: Path):
    for page in _nav_pages(yaml.safe_load((REPO / "mkdocs.yml").read_text())["nav"]):
        stem = page.removesuffix(".md")
        built = site / (stem.removesuffix("index") if stem.endswith("index") else stem + "/") / "index.html"
        assert built.is_file(), f"nav page {page} was not built ({built})"
    assert (site / "javascripts" / "katex" / "katex.min.js").is_file()
    assert (site / "assets" / "cld-ring-nfe10.png").is_file()


def test_site_loads_nothing_from_a_cdn(site: Path):
    hits = []
    for f in site.rglob("*"):
        if not f.is_file() or f.suffix not in (".html", ".js", ".css", ".json", ".xml", ".map"):
            continue
        text = f.read_text(encoding="utf-8", errors="replace")
        rel = f.relative_to(site).as_posix()
        if re.fullmatch(r"assets/javascripts/bundle\.[0-9a-f]+\.min\.js(\.map)?", rel):
            urls = set(re.findall(r"https?://[^\s\"'`)]+", text))
            bad = {u for u in urls if CDN_PATTERN.search(u) and not any(u.startswith(a) for a in THEME_BUNDLE_ALLOWED)}
            hits += [f"{rel}: {u}" for u in sorted(bad)]
            continue
        hits += [f"{rel}: ...{text[max(0, m.start() - 40):m.end() + 40]!r}..." for m in CDN_PATTERN.finditer(text)]
    assert not hits, "CDN references in the built site:\n" + "\n".join(hits[:20])
    # Every stylesheet and script a page loads is part of the site.
    for f in site.rglob("*.html"):
        text = f.read_text(encoding="utf-8")
        for tag in re.findall(r"<(?:script|link)\b[^>]*>", text):
            for url in re.findall(r"(?:src|href)=\"([^\"]+)\"", tag):
                if "rel=\"canonical\"" in tag or "rel=\"alternate\"" in tag:
                    continue
                assert not re.match(r"(https?:)?//", url), f"{f.relative_to(site)} loads {url}"


class _LooseMath(HTMLParser):
    """Collects text outside code and outside ``.arithmatex`` that still holds math delimiters."""

    VOID = {"br", "img", "hr", "input", "meta", "link", "source", "wbr", "area", "base", "col", "embed",
            "param", "track", "path", "circle", "rect", "line", "polyline", "polygon"}

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[bool] = []  # per open element: does it hide its text from the check?
        self.found: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag in self.VOID:
            return
        classes = (dict(attrs).get("class") or "").split()
        self.stack.append(tag in ("code", "pre", "script", "style") or "arithmatex" in classes)

    def handle_endtag(self, tag):
        if tag not in self.VOID and self.stack:
            self.stack.pop()

    def handle_data(self, data):
        if not any(self.stack) and re.search(r"\$\$|\\\(|\\\[", data):
            self.found.append(data.strip()[:120])


def test_all_math_is_marked_up(site: Path):
    """Every formula reached arithmatex: no ``$$``, ``\\(`` or ``\\[`` left in plain text of any page."""
    loose = {}
    for f in sorted(site.rglob("*.html")):
        parser = _LooseMath()
        parser.feed(f.read_text(encoding="utf-8"))
        if parser.found:
            loose[f.relative_to(site).as_posix()] = parser.found[:3]
    assert not loose, f"math outside arithmatex (a display formula inside a list item needs 4-space indentation): {loose}"


def test_include_hook(tmp_path: Path):
    """``<!-- include-if-exists: PATH | CMD -->`` becomes a snippets include, or a note with CMD."""
    spec = importlib.util.spec_from_file_location("docs_results_hook", DOCS / "_hooks" / "results.py")
    hook = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hook)
    config = {"config_file_path": str(tmp_path / "mkdocs.yml")}
    page = "before\n<!-- include-if-exists: out/table.md | python make_table.py --fast -->\nafter\n"
    missing = hook.on_page_markdown(page, None, config, None)
    assert "--8<--" not in missing and "python make_table.py --fast" in missing and "out/table.md" in missing
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "table.md").write_text("| a |\n|---|\n| 1 |\n")
    present = hook.on_page_markdown(page, None, config, None)
    assert present == 'before\n--8<-- "out/table.md"\nafter\n'


# ------------------------------------------------------------------------------ runnable blocks
@contextlib.contextmanager
def _time_limit(seconds: int, what: str):
    if not hasattr(signal, "SIGALRM"):
        yield
        return

    def fail(signum, frame):
        raise TimeoutError(f"{what} ran longer than {seconds} s; keep runnable doc blocks small")

    old = signal.signal(signal.SIGALRM, fail)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@pytest.mark.parametrize("block", RUNNABLE, ids=[b.id for b in RUNNABLE])
def test_runnable_block(block: Block, tmp_path, monkeypatch):
    import torch

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    # Line numbers of tracebacks are those of the Markdown file.
    code = compile("\n" * (block.line - 1) + block.code, str(block.path), "exec")
    threads, dtype = torch.get_num_threads(), torch.get_default_dtype()
    # One thread: these blocks are tiny, and several threads on a busy machine are far slower.
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]), _time_limit(BLOCK_TIMEOUT_S, block.id):
            exec(code, {"__name__": "__main__", "__file__": str(block.path)})
    finally:
        torch.set_num_threads(threads)
        torch.set_default_dtype(dtype)


# ------------------------------------------------------------------------------ YAML examples
def _class_paths(node, where="") -> list[tuple[str, str, dict]]:
    found = []
    if isinstance(node, dict):
        if "class_path" in node:
            found.append((where, node["class_path"], node.get("init_args") or {}))
        for key, value in node.items():
            found += _class_paths(value, f"{where}.{key}" if where else str(key))
    elif isinstance(node, list):
        for k, value in enumerate(node):
            found += _class_paths(value, f"{where}[{k}]")
    return found


def _init_parameters(cls) -> set[str]:
    """Keyword arguments a class accepts, following ``**kwargs`` up the MRO."""
    names: set[str] = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        params = inspect.signature(init).parameters.values()
        names |= {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)} - {"self"}
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    return names


def _resolve(class_path: str):
    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)


@pytest.mark.parametrize("block", YAML_BLOCKS, ids=[b.id for b in YAML_BLOCKS])
def test_yaml_example(block: Block):
    config = yaml.safe_load(block.code)
    for where, class_path, init_args in _class_paths(config):
        if class_path.startswith(PLACEHOLDER_PREFIXES):
            continue
        cls = _resolve(class_path)
        unknown = set(init_args) - _init_parameters(cls)
        assert not unknown, f"{block.id}: {where} ({class_path}) has no argument(s) {sorted(unknown)}"


def _is_full_config(block: Block) -> bool:
    """A complete config (model and data) that uses only the package's classes."""
    config = yaml.safe_load(block.code)
    return (isinstance(config, dict) and {"model", "data"} <= set(config)
            and not any(cp.startswith(PLACEHOLDER_PREFIXES) for _, cp, _ in _class_paths(config)))


FULL_CONFIGS = [b for b in YAML_BLOCKS if _is_full_config(b)]


@pytest.mark.parametrize("block", FULL_CONFIGS, ids=[b.id for b in FULL_CONFIGS])
def test_full_config_parses(block: Block, tmp_path, monkeypatch):
    from gddim_lightning.cli import main

    path = tmp_path / "config.yaml"
    path.write_text(block.code)
    monkeypatch.setattr(sys, "argv", ["gddim_lightning"])
    out = io.StringIO()
    # run=False: the parser without subcommands, as `fit --config ... --print_config` would parse it
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_info:
        main(["--config", str(path), "--print_config"], run=False)
    assert exit_info.value.code in (0, None), f"{block.id} does not parse:\n{out.getvalue()[-2000:]}"
    assert "class_path" in out.getvalue()


def _cli_commands() -> list[tuple[str, list[str]]]:
    """``python -m gddim_lightning ...`` lines of the shell blocks, as argument lists (deduplicated)."""
    found, seen = [], set()
    for block in BLOCKS:
        if block.lang not in ("bash", "sh", "shell", "console"):
            continue
        for line in re.sub(r"\\\n\s*", " ", block.code).splitlines():
            if "python -m gddim_lightning " not in line:
                continue
            args = shlex.split(line.split("python -m gddim_lightning ", 1)[1], comments=True)
            args = args[: args.index(">")] if ">" in args else args
            args = [re.sub(r"\$\w+", "20", a) for a in args]
            if tuple(args) not in seen:
                seen.add(tuple(args))
                found.append((f"{block.id}:{' '.join(args)[:60]}", args))
    return found


CLI_COMMANDS = _cli_commands()
REFERENCE_CONFIG = "cli.md"  # its complete config stands in for configs/*.yaml that do not exist yet


def _config_text(name: str) -> str:
    """A config named in a documented command: the repository's file; else the docs' YAML block that
    starts with ``# <name>``; else, for ``configs/*``, the complete config of ``cli.md``; else ``{}``."""
    if (REPO / name).is_file():
        return (REPO / name).read_text()
    for block in YAML_BLOCKS:
        if block.code.startswith(f"# {Path(name).name}\n"):
            return block.code
    if name.startswith("configs/"):
        return next(b for b in FULL_CONFIGS if b.path.name == REFERENCE_CONFIG).code
    return "{}\n"


@pytest.mark.parametrize("args", [a for _, a in CLI_COMMANDS], ids=[i for i, _ in CLI_COMMANDS])
def test_cli_command_parses(args: list[str], tmp_path, monkeypatch):
    """Every documented command line parses: subcommand, config keys and flags exist."""
    from gddim_lightning.cli import main

    for k, arg in enumerate(args[:-1]):
        if arg == "--config":
            target = tmp_path / args[k + 1]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(_config_text(args[k + 1]))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["gddim_lightning"])
    extra = [] if "--help" in args or "--print_config" in args else ["--print_config"]
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out), pytest.raises(SystemExit) as exit_info:
        main(args + extra)
    assert exit_info.value.code in (0, None), f"python -m gddim_lightning {' '.join(args)}:\n{out.getvalue()[-3000:]}"


# ------------------------------------------------------------------------------ headless browser
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
BROWSER_PAGES = ["", "concepts/", "glossary/", "components/oracles/", "reference/samplers/"]

_CHECK_PAGE_JS = r"""
document.fonts.ready.then(() => {
  const math = [...document.querySelectorAll(".arithmatex")];
  const leftover = math.map(el => {
    const copy = el.cloneNode(true);
    copy.querySelectorAll(".katex").forEach(k => k.remove());
    return copy.textContent.trim();
  }).filter(t => t.length > 0);
  const article = document.querySelector("article").cloneNode(true);
  article.querySelectorAll("pre, code, .katex").forEach(e => e.remove());
  const text = article.textContent;
  return JSON.stringify({
    title: document.title,
    arithmatex: math.length,
    katex: document.querySelectorAll(".arithmatex .katex").length,
    katexErrors: document.querySelectorAll(".katex-error").length,
    leftover: leftover.slice(0, 5),
    rawDelimiters: (text.match(/\$\$|\\\(|\\\[/g) || []).length,
    katexFont: document.fonts.check("16px KaTeX_Main"),
  });
})
"""


class DevTools:
    """Minimal Chrome DevTools Protocol client over ``--remote-debugging-pipe`` (stdlib only)."""

    def __init__(self, binary: str, user_data_dir: Path) -> None:
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()

        def plumbing() -> None:  # in the child: fd 3 reads commands, fd 4 writes replies
            import fcntl

            r = fcntl.fcntl(to_chrome_r, fcntl.F_DUPFD, 10)
            w = fcntl.fcntl(from_chrome_w, fcntl.F_DUPFD, 10)
            os.dup2(r, 3)
            os.dup2(w, 4)

        self.proc = subprocess.Popen(
            [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-dev-shm-usage", f"--user-data-dir={user_data_dir}", "--remote-debugging-pipe",
             "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            preexec_fn=plumbing, close_fds=False,
        )
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._next_id = 0
        self._messages: queue.Queue = queue.Queue()
        self.events: list[dict] = []
        threading.Thread(target=self._reader, daemon=True).start()

    def _reader(self) -> None:
        buffer = b""
        while True:
            try:
                chunk = os.read(self._from_chrome, 1 << 16)
            except OSError:  # closed by close()
                chunk = b""
            if not chunk:
                self._messages.put(None)
                return
            buffer += chunk
            *messages, buffer = buffer.split(b"\0")
            for message in messages:
                self._messages.put(json.loads(message))

    def _next(self, deadline: float, waiting_for: str) -> dict | None:
        try:
            return self._messages.get(timeout=max(0.01, deadline - time.monotonic()))
        except queue.Empty:
            raise TimeoutError(f"chromium: no {waiting_for} in time") from None

    def send(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 30) -> dict:
        self._next_id += 1
        msg = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._to_chrome, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._next(deadline, f"reply to {method}")
            if reply is None:
                raise RuntimeError(f"chromium exited: {self.proc.stderr.read().decode()[-2000:]}")
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_event(self, method: str, session: str, timeout: float = 30) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            for k, event in enumerate(self.events):
                if event.get("method") == method and event.get("sessionId") == session:
                    return self.events.pop(k)
            reply = self._next(deadline, f"{method} event")
            if reply is None:
                raise RuntimeError("chromium exited")
            self.events.append(reply)

    def drain(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                reply = self._messages.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                return
            if reply is None:
                return
            self.events.append(reply)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.send("Browser.close", timeout=5)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for fd in (self._to_chrome, self._from_chrome):
            with contextlib.suppress(OSError):
                os.close(fd)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served_site(site: Path):
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
                               "--directory", str(site)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}/"
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(base, timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        yield base
    finally:
        server.terminate()
        server.wait(timeout=10)


def _problems(events: list[dict], session: str, base: str) -> list[str]:
    out = []
    for e in events:
        if e.get("sessionId") != session:
            continue
        method, p = e.get("method"), e.get("params", {})
        if method == "Runtime.exceptionThrown":
            d = p["exceptionDetails"]
            out.append(f"exception: {d.get('exception', {}).get('description') or d.get('text')}")
        elif method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            out.append("console.error: " + " ".join(str(a.get("value", a.get("description", ""))) for a in p["args"]))
        elif method == "Log.entryAdded" and p["entry"]["level"] == "error":
            out.append(f"log: {p['entry']['text']} {p['entry'].get('url', '')}")
        elif method == "Network.loadingFailed" and not p.get("canceled"):
            out.append(f"failed request: {p.get('errorText')} ({p.get('requestId')})")
        elif method == "Network.requestWillBeSent":
            url = p["request"]["url"]
            if not url.startswith((base, "data:", "blob:", "about:")):
                out.append(f"request outside the site: {url}")
    return out


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium); "
                                               "the headless rendering check needs it")
def test_pages_render_in_headless_chromium(served_site: str, tmp_path: Path):
    tools = DevTools(CHROMIUM, tmp_path / "profile")
    try:
        target = tools.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = tools.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            tools.send(f"{domain}.enable", session=session)
        failures = []
        for page in BROWSER_PAGES:
            url = served_site + page
            tools.events.clear()
            tools.send("Page.navigate", {"url": url}, session=session)
            tools.wait_event("Page.loadEventFired", session)
            result = tools.send("Runtime.evaluate", {"expression": _CHECK_PAGE_JS, "awaitPromise": True,
                                                     "returnByValue": True}, session=session)
            tools.drain(0.3)  # late requests (fonts, search index) and their errors
            state = json.loads(result["result"]["value"])
            problems = _problems(tools.events, session, served_site)
            if state["katex"] == 0 and page in ("", "concepts/", "glossary/"):
                problems.append("no formula was typeset (no .katex inside .arithmatex)")
            if state["arithmatex"] and not state["katexFont"]:
                problems.append("the KaTeX_Main font did not load")
            if state["leftover"] or state["rawDelimiters"] or state["katexErrors"]:
                problems.append(f"untypeset math: {state}")
            failures += [f"/{page}: {p}" for p in problems]
        assert not failures, "\n".join(failures)
    finally:
        tools.close()
