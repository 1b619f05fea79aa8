"""A WebRTC softphone in headless Chromium for the tests: SIP.js over the edge's WebSocket.

Reads: the SIP.js package from the npm registry (installed once, at a pinned version, into a cache
folder with `npm`), the page in `browser_page/`, what the page posts (`/event`). Writes: a tiny
local HTTP server on 127.0.0.1 serving the page and SIP.js, and a Debian `chromium` process
(headless, fake media devices, a fresh profile) that opens it.

The page drives itself from its `?config=` (the AOR, the edge's ws/wss URL, a number to call,
whether to REGISTER and auto-answer) and polls the harness for commands (`hangup`, `stop`): no
browser automation protocol is needed, so nothing but `chromium` and `npm` must be on the machine.
Every SIP message the page sends and receives comes back as an event (`sip_out`, `sip_in`), which
is what tests assert on; the media of a call is not checked (the test peers do not speak DTLS-SRTP).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

from callcenter_dev.processes import ChildProcess

SIPJS_VERSION = "0.21.2"
PAGE = Path(__file__).parent / "browser_page"
CHROMIUM = os.environ.get("CC_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
    "--autoplay-policy=no-user-gesture-required", "--ignore-certificate-errors",
)
_TYPES = {".html": "text/html", ".js": "text/javascript", ".map": "application/json"}
_SDP_MEDIA = re.compile(r"^( *)m=audio \[media_port\] RTP/AVP[^\n]*\n(?: *a=[^\n]*\n)*", re.MULTILINE)
_FINGERPRINT = ":".join(f"{i * 7 % 256:02X}" for i in range(32))


def webrtc_sdp(text: str, *, offerer: bool) -> str:
    """A SIPp scenario's text with its audio descriptions made to look like WebRTC's (ICE
    credentials, a DTLS fingerprint, UDP/TLS/RTP/SAVPF, rtcp-mux), which Chromium asks of a
    description before it applies it. An offer says setup:actpass, an answer setup:passive (the
    browser is then the DTLS client for good). No media flows: SIPp speaks no DTLS."""
    lines = ["m=audio [media_port] UDP/TLS/RTP/SAVPF 0", "a=rtpmap:0 PCMU/8000", "a=mid:0",
             "a=ice-ufrag:ccsipp", "a=ice-pwd:callcentertestsippicepwd1", f"a=fingerprint:sha-256 {_FINGERPRINT}",
             f"a=setup:{'actpass' if offerer else 'passive'}", "a=rtcp-mux",
             "a=candidate:1 1 udp 2130706431 [media_ip] 9 typ host", "a=sendrecv"]
    text, count = _SDP_MEDIA.subn(lambda m: "".join(f"{m.group(1)}{line}\n" for line in lines), text)
    if count == 0:
        raise ValueError("no SIPp audio description ('m=audio [media_port] RTP/AVP ...') to replace")
    return text


def cache_dir() -> Path:
    """Where SIP.js is installed (CC_BROWSER_CACHE, else ~/.cache/callcenter-dev)."""
    return Path(os.environ.get("CC_BROWSER_CACHE", Path.home() / ".cache" / "callcenter-dev"))


def missing_tools() -> list[str]:
    """What the browser harness needs and this machine lacks (tests skip with it)."""
    return [tool for tool in (CHROMIUM, "npm") if shutil.which(tool) is None]


def ensure_sipjs(version: str = SIPJS_VERSION) -> Path:
    """The folder of SIP.js's ES modules (`lib/`), installed with npm into the cache on first use."""
    prefix = cache_dir() / f"sipjs-{version}"
    lib = prefix / "node_modules" / "sip.js" / "lib"
    if (lib / "index.js").is_file():
        return lib
    prefix.mkdir(parents=True, exist_ok=True)
    subprocess.run(["npm", "install", "--prefix", str(prefix), "--no-audit", "--no-fund", "--no-save",
                    "--ignore-scripts", f"sip.js@{version}"], check=True, capture_output=True, timeout=300)
    if not (lib / "index.js").is_file():
        raise RuntimeError(f"npm installed no sip.js@{version} modules under {prefix}")
    return lib


@dataclass
class PhoneConfig:
    """What the page does: `server` the edge's ws:// or wss:// URL; `aor` its own SIP URI; `call` a
    URI to INVITE at once; `register` (with `username`/`password`) and `auto_answer`."""

    server: str
    aor: str = "sip:browser@callcenter.invalid"
    call: str | None = None
    register: bool = False
    username: str | None = None
    password: str | None = None
    auto_answer: bool = False
    expires: int = 300

    def as_json(self) -> str:
        return json.dumps({"server": self.server, "aor": self.aor, "call": self.call, "register": self.register,
                           "username": self.username, "password": self.password,
                           "autoAnswer": self.auto_answer, "expires": self.expires})


@dataclass
class _State:
    events: list[dict[str, Any]] = field(default_factory=list)
    commands: list[dict[str, Any]] = field(default_factory=list)
    changed: threading.Condition = field(default_factory=threading.Condition)


# the browser is killed when the thread that started it ends, even by SIGKILL or a timeout's SIGTERM,
# when no close() runs (util-linux's setpriv: PR_SET_PDEATHSIG, kept across its exec of chromium)
_SETPRIV = shutil.which("setpriv")
_DIES_WITH_US = (_SETPRIV, "--pdeathsig", "KILL") if _SETPRIV else ()


@dataclass
class _Chromium(ChildProcess):
    """The browser process, in a session of its own: stopped with its zygote, renderers and GPU
    process (its process group)."""

    proc: subprocess.Popen[bytes]
    logfile: Path
    stop_timeout_s: ClassVar[float] = 5.0
    own_session: ClassVar[bool] = True


class BrowserPhone:
    """One headless Chromium running the test page against the edge; `events` is what it posted."""

    def __init__(self, config: PhoneConfig, *, workdir: Path | None = None) -> None:
        self.config = config
        self.sipjs = ensure_sipjs()
        self.state = _State()
        self._workdir = Path(tempfile.mkdtemp(prefix="cc-browser-", dir=workdir))
        self._http = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._http.daemon_threads = True
        self._http_thread = threading.Thread(target=self._http.serve_forever, name="browser-http", daemon=True)
        self._chromium: _Chromium | None = None

    @property
    def _proc(self) -> subprocess.Popen[bytes] | None:
        """The browser process (None before `start`)."""
        return None if self._chromium is None else self._chromium.proc

    @property
    def url(self) -> str:
        query = urllib.parse.urlencode({"config": self.config.as_json()})
        return f"http://127.0.0.1:{self._http.server_address[1]}/phone.html?{query}"

    def start(self) -> BrowserPhone:
        self._http_thread.start()
        profile = self._workdir / "profile"
        log = (self._workdir / "chromium.log").open("wb")
        argv = [*_DIES_WITH_US, CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", self.url]
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        self._chromium = _Chromium(proc, self._workdir / "chromium.log")
        return self

    def close(self) -> None:
        """Stop Chromium with all its processes (zygote, renderers, GPU: its session's process group,
        which outlives the browser process when a signal reaches only that one), then the page server."""
        if self._chromium is not None:
            self._chromium.stop()
        self._http.shutdown()
        self._http.server_close()
        if not os.environ.get("CC_BROWSER_KEEP"):
            shutil.rmtree(self._workdir, ignore_errors=True)

    def __enter__(self) -> BrowserPhone:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- what the page did -----------------------------------------------------------------
    @property
    def events(self) -> list[dict[str, Any]]:
        with self.state.changed:
            return list(self.state.events)

    def kinds(self) -> list[str]:
        return [e["kind"] for e in self.events if not e["kind"].startswith("sip_")]

    def sip(self, direction: str = "in") -> list[str]:
        """The SIP messages the page received (`in`) or sent (`out`), in order."""
        return [e["text"] for e in self.events if e["kind"] == f"sip_{direction}"]

    def wait_for(self, predicate: Callable[[dict[str, Any]], bool], timeout: float, what: str = "") -> dict[str, Any]:
        """The first event that satisfies `predicate`, waiting up to `timeout` s (AssertionError after)."""
        deadline = time.monotonic() + timeout
        seen = 0
        with self.state.changed:
            while True:
                for event in self.state.events[seen:]:
                    if predicate(event):
                        return event
                seen = len(self.state.events)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"the browser did not report {what or 'the event'} in {timeout} s; "
                                         f"it reported {self.kinds()}; errors: {self.errors()}")
                self.state.changed.wait(left)

    def wait_kind(self, kind: str, timeout: float = 20.0) -> dict[str, Any]:
        return self.wait_for(lambda e: e["kind"] == kind, timeout, kind)

    def wait_sip(self, direction: str, start: str, timeout: float = 20.0) -> str:
        """The first SIP message in `direction` whose start line begins with `start` (e.g. 'INVITE ',
        'SIP/2.0 200', 'BYE ')."""
        event = self.wait_for(lambda e: e["kind"] == f"sip_{direction}" and e["text"].startswith(start),
                              timeout, f"sip_{direction} {start!r}")
        return str(event["text"])

    def errors(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e["kind"] == "error"]

    def command(self, name: str, **args: Any) -> None:
        with self.state.changed:
            self.state.commands.append({"name": name, **args})
            self.state.changed.notify_all()

    def chromium_log(self) -> str:
        try:
            return (self._workdir / "chromium.log").read_text(errors="replace")
        except OSError:
            return ""

    # -- the HTTP side ---------------------------------------------------------------------
    def _handler(self) -> type[BaseHTTPRequestHandler]:
        phone = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                return None

            def _reply(self, status: int, body: bytes, kind: str = "application/json") -> None:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                path = urllib.parse.urlparse(self.path).path
                if path == "/command":
                    self._reply(200, json.dumps(phone._take_commands()).encode())
                    return
                if path.startswith("/sipjs/"):
                    base, name = phone.sipjs, path.removeprefix("/sipjs/")
                else:
                    base, name = PAGE, path.lstrip("/")
                target = (base / name).resolve()
                if not target.is_relative_to(base.resolve()) or not target.is_file():
                    self._reply(404, b"not found", "text/plain")
                    return
                self._reply(200, target.read_bytes(), _TYPES.get(target.suffix, "application/octet-stream"))

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                try:
                    event = json.loads(self.rfile.read(length) or b"{}")
                except ValueError:
                    self._reply(400, b"{}")
                    return
                with phone.state.changed:
                    phone.state.events.append(event)
                    phone.state.changed.notify_all()
                self._reply(200, b"{}")

        return Handler

    def _take_commands(self) -> list[dict[str, Any]]:
        """The page's poll: the queued commands, waiting up to 1 s for one."""
        with self.state.changed:
            if not self.state.commands:
                self.state.changed.wait(1.0)
            commands, self.state.commands = self.state.commands, []
            return commands
