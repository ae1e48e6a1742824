"""A loopback HTTP mirror for the paper dress rehearsal (issue 11).

Serves the files under ``ROOT`` (laid out ``ROOT/<host>/<path>``, as ``$REGATTN_MIRROR`` expects)
on 127.0.0.1 with HEAD, GET and single-range requests (``Range: bytes=a-b``, ``a-``, ``-n``:
206 with ``Content-Range``; 416 with ``Content-Range: bytes */size`` past the end; a multi-range
request is answered with the whole file, which HTTP allows). Missing files, folders and paths
leaving ``ROOT`` get 404. Each request is logged as one JSON line (method, path, range, status,
bytes sent, complete), so a test can count what was downloaded and how. SIGTERM and SIGINT stop
it cleanly (exit status 0).

    python scripts/loopback_mirror.py ROOT [--port 0] [--port-file F] [--log F]
        [--throttle BYTES_PER_S] [--throttle-match REGEX]

``--port 0`` (the default) takes a free port; the port is printed and, with ``--port-file``,
written to that file (atomically) once the server accepts connections. ``--throttle`` limits
each response body to that many bytes per second, for the paths matching ``--throttle-match``
(default: all), so that a test can kill a download midway.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
import threading
import time
import urllib.parse
from collections.abc import Sequence
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

CHUNK = 1 << 16
_RANGE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$")


def parse_range(header: str | None, size: int) -> tuple[int, int] | None | str:
    """The inclusive byte span ``(start, end)`` a ``Range`` header asks of a ``size``-byte file.

    Returns ``None`` to serve the whole file (no header, an unparsable one or several ranges)
    and ``"unsatisfiable"`` when the range starts at or past the end (HTTP 416).
    """
    if not header or "," in header:
        return None
    m = _RANGE.match(header)
    if not m or (m.group(1) == "" and m.group(2) == ""):
        return None
    first, last = m.group(1), m.group(2)
    if first == "":  # suffix range: the last n bytes
        n = int(last)
        if n == 0 or size == 0:
            return "unsatisfiable"
        return max(0, size - n), size - 1
    start = int(first)
    end = size - 1 if last == "" else min(int(last), size - 1)
    if start >= size or (last != "" and int(last) < start):
        return "unsatisfiable"
    return start, end


class MirrorServer(ThreadingHTTPServer):
    """``ThreadingHTTPServer`` serving ``root``; ``throttle`` in bytes/s (``None``: none)."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self,
        root: str | os.PathLike,
        port: int = 0,
        host: str = "127.0.0.1",
        throttle: float | None = None,
        throttle_match: str | None = None,
        log: str | os.PathLike | None = None,
    ) -> None:
        super().__init__((host, port), MirrorHandler)
        self.root = Path(root).resolve()
        self.throttle = throttle
        self.throttle_re = re.compile(throttle_match) if throttle_match else None
        self.log_path = Path(log) if log is not None else None
        self._log_lock = threading.Condition()
        self.records_written = 0

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://{self.server_address[0]}:{self.port}"

    def throttled(self, path: str) -> float | None:
        if not self.throttle:
            return None
        if self.throttle_re is not None and not self.throttle_re.search(path):
            return None
        return float(self.throttle)

    def record(self, entry: dict) -> None:
        if self.log_path is None:
            return
        line = json.dumps(entry, sort_keys=True) + "\n"
        with self._log_lock:
            with open(self.log_path, "a") as f:
                f.write(line)
            self.records_written += 1
            self._log_lock.notify_all()

    def wait_for_records(self, n: int, timeout: float = 30.0) -> list[dict]:
        """The log's records once ``n`` have been written. A record is written after its answer is
        sent, so a client can hold an answer before its line is in the log: read it through this.
        Raises ``TimeoutError`` naming the log if fewer than ``n`` arrive within ``timeout``."""
        with self._log_lock:
            if not self._log_lock.wait_for(lambda: self.records_written >= n, timeout):
                raise TimeoutError(
                    f"{self.log_path}: {self.records_written} of {n} requests logged in {timeout} s"
                )
        return read_log(self.log_path)


class MirrorHandler(BaseHTTPRequestHandler):
    server: MirrorServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's name
        pass  # requests go to the JSON log instead of stderr

    def _resolve(self) -> tuple[str, Path | None]:
        rel = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path).lstrip("/")
        target = (self.server.root / rel).resolve()
        inside = target == self.server.root or self.server.root in target.parents
        return rel, target if inside and target.is_file() else None

    def _send_error(self, status: int, rel: str, rng: str | None, extra: dict | None = None):
        body = f"{status} {HTTPStatus(status).phrase}: /{rel}\n".encode()
        self.send_response(status)
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self.server.record(
            {
                "method": self.command,
                "path": rel,
                "range": rng,
                "status": status,
                "bytes": 0,
                "complete": True,
                "time": time.time(),
            }
        )

    def _serve(self) -> None:
        rel, path = self._resolve()
        rng = self.headers.get("Range")
        if path is None:
            self._send_error(404, rel, rng)
            return
        size = path.stat().st_size
        span = parse_range(rng, size)
        if span == "unsatisfiable":
            self._send_error(416, rel, rng, {"Content-Range": f"bytes */{size}"})
            return
        start, end = (0, size - 1) if span is None else span
        length = max(0, end - start + 1)
        self.send_response(200 if span is None else 206)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(length))
        if span is not None:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        sent, complete = 0, True
        if self.command == "GET":
            rate = self.server.throttled(rel)
            t0 = time.monotonic()
            try:
                with open(path, "rb") as f:
                    f.seek(start)
                    while sent < length:
                        n = min(CHUNK if rate is None else max(1, int(rate) // 20), length - sent)
                        chunk = f.read(n)
                        if not chunk:
                            break
                        self.wfile.write(chunk)
                        sent += len(chunk)
                        if rate is not None:  # sleep until the average rate is respected
                            ahead = sent / rate - (time.monotonic() - t0)
                            if ahead > 0:
                                time.sleep(ahead)
                self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                complete = False  # the client went away (killed mid-download)
            complete = complete and sent == length
        self.server.record(
            {
                "method": self.command,
                "path": rel,
                "range": rng,
                "status": 200 if span is None else 206,
                "bytes": sent,
                "complete": complete,
                "time": time.time(),
            }
        )

    def do_GET(self) -> None:  # noqa: N802 - the base class's name
        self._serve()

    def do_HEAD(self) -> None:  # noqa: N802 - the base class's name
        self._serve()


def start_in_thread(root: str | os.PathLike, **kwargs) -> MirrorServer:
    """Start a ``MirrorServer`` (``kwargs`` as its constructor) in a daemon thread; call
    ``server.shutdown(); server.server_close()`` to stop it."""
    server = MirrorServer(root, **kwargs)
    threading.Thread(target=server.serve_forever, name="loopback-mirror", daemon=True).start()
    return server


def read_log(path: str | os.PathLike) -> list[dict]:
    """The request records of a mirror log (one JSON object per line); ``[]`` if absent."""
    p = Path(path)
    if not p.is_file():
        return []
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("root", type=Path, help="folder served, laid out <root>/<host>/<path>")
    ap.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    ap.add_argument("--port", type=int, default=0, help="port (default 0: a free one)")
    ap.add_argument("--port-file", type=Path, default=None, help="write the port here")
    ap.add_argument("--log", type=Path, default=None, help="append one JSON line per request")
    ap.add_argument(
        "--throttle",
        type=float,
        default=None,
        metavar="BYTES_PER_S",
        help="limit response bodies to this rate (default: unlimited)",
    )
    ap.add_argument(
        "--throttle-match",
        default=None,
        metavar="REGEX",
        help="throttle only paths matching this regular expression (default: all)",
    )
    args = ap.parse_args(argv)
    if not args.root.is_dir():
        print(f"loopback_mirror: {args.root} is not a folder", file=sys.stderr)
        return 2
    server = MirrorServer(
        args.root, args.port, args.host, args.throttle, args.throttle_match, args.log
    )

    def stop(signum, frame) -> None:
        # shutdown() waits for serve_forever to return, so it must run in another thread
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if args.port_file is not None:
        tmp = args.port_file.with_name(args.port_file.name + ".tmp")
        tmp.write_text(f"{server.port}\n")
        os.replace(tmp, args.port_file)
    print(f"loopback_mirror: serving {args.root} at {server.base_url}", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
    print("loopback_mirror: stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
