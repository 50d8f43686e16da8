"""Real servers on 127.0.0.1 for tests of remote reads: S3 (moto), HTTP with Range, a fault proxy.

Nothing here mocks GDAL, rasterio or the network: GDAL talks HTTP to these servers through
its ``/vsis3/`` and ``/vsicurl/`` file systems. Faults are injected on the server side by
:class:`FaultProxy`, which sits between GDAL and a server and answers chosen requests with
errors, stalls or latency.

Usage (see the fixtures in tests/conftest.py)::

    with S3Server() as s3, FaultProxy(s3.port) as proxy:
        s3.upload(path, "bucket", "key.tif")
        proxy.fail("key.tif", status=503, times=2)
        # GDAL: AWS_S3_ENDPOINT=proxy.endpoint, AWS_HTTPS=NO, AWS_VIRTUAL_HOSTING=FALSE
"""

import http.client
import json
import logging
import os
import re
import socket
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any

#: Credentials the test servers accept; tests set them as environment variables.
TEST_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "geodino-test-key-id",
    "AWS_SECRET_ACCESS_KEY": "geodino-test-secret-0badc0de",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _Server:
    """Start/stop as a context manager."""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Any:
        self.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.stop()


class _HTTPServer(_Server):
    """A threaded HTTP server on a free port of 127.0.0.1."""

    def _listen(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self.port = int(self._httpd.server_address[1])
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        """The server's base URL."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


class S3Server(_Server):
    """moto's standalone S3-compatible server on 127.0.0.1 (a real HTTP server, in a thread)."""

    def __init__(self) -> None:
        self.port = free_port()
        self._server: Any = None

    @property
    def endpoint(self) -> str:
        """``host:port``, as GDAL's ``AWS_S3_ENDPOINT`` takes it."""
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        for key, value in TEST_CREDENTIALS.items():
            os.environ.setdefault(key, value)
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()

    def client(self) -> Any:
        """A boto3 S3 client of this server."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=f"http://{self.endpoint}",
            aws_access_key_id=TEST_CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=TEST_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            region_name=TEST_CREDENTIALS["AWS_DEFAULT_REGION"],
        )

    def upload(self, path: Path, bucket: str, key: str) -> str:
        """Upload a file (creating the bucket); returns its ``s3://`` href."""
        client = self.client()
        names = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
        if bucket not in names:
            client.create_bucket(Bucket=bucket)
        client.upload_file(str(path), bucket, key)
        return f"s3://{bucket}/{key}"

    def put_bytes(self, data: bytes, bucket: str, key: str) -> None:
        """Replace an object's bytes (e.g. with a truncated copy)."""
        self.client().put_object(Bucket=bucket, Key=key, Body=data)

    def delete(self, bucket: str, key: str) -> None:
        """Delete an object."""
        self.client().delete_object(Bucket=bucket, Key=key)


class _RangeHandler(BaseHTTPRequestHandler):
    """Static files with ``Range: bytes=a-b`` answered 206, as object stores answer them."""

    root: Path

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _target(self) -> Path | None:
        path = (self.root / self.path.split("?")[0].lstrip("/")).resolve()
        return path if path.is_file() and self.root in path.parents else None

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def do_GET(self) -> None:
        self._answer(body=True)

    def _answer(self, body: bool) -> None:
        target = self._target()
        if target is None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        data = target.read_bytes()
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if match:
            first = int(match.group(1))
            last = min(int(match.group(2) or len(data) - 1), len(data) - 1)
            part = data[first : last + 1]
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {first}-{last}/{len(data)}")
        else:
            part = data
            self.send_response(200)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(len(part)))
        self.send_header("Content-Type", "image/tiff")
        self.end_headers()
        if body:
            self.wfile.write(part)


class RangeHTTPServer(_HTTPServer):
    """A threaded HTTP server of a folder on 127.0.0.1, with Range requests.

    Args:
        root: the folder served at ``/``.
    """

    def __init__(self, root: Path) -> None:
        handler = type("Handler", (_RangeHandler,), {"root": Path(root).resolve()})
        self._listen(handler)


@dataclass
class Fault:
    """What the proxy does to requests whose path contains ``match``.

    Args:
        match: substring of the request path (e.g. an object key).
        status: answer with this HTTP status instead of forwarding (e.g. 503).
        stall: seconds to wait before answering (past GDAL_HTTP_TIMEOUT: a stalled server).
        times: how many matching requests are hit (None: all).
        methods: the HTTP methods hit.
    """

    match: str
    status: int | None = None
    stall: float = 0.0
    times: int | None = None
    methods: tuple[str, ...] = ("GET", "HEAD")
    hits: int = 0

    def takes(self, method: str, path: str) -> bool:
        """Whether this request is hit (and count it)."""
        if self.match not in path or method not in self.methods:
            return False
        if self.times is not None and self.hits >= self.times:
            return False
        self.hits += 1
        return True


class FaultProxy(_HTTPServer):
    """An HTTP proxy on 127.0.0.1 in front of a server, injecting faults and latency.

    Requests are forwarded unchanged (method, path, headers, body: S3 signatures stay valid),
    except those a :class:`Fault` takes. Every request is counted per path.

    Args:
        upstream_port: the port of the server behind (on 127.0.0.1).
        latency: seconds added to every request (a far-away object store).
    """

    def __init__(self, upstream_port: int, latency: float = 0.0) -> None:
        self.upstream_port = upstream_port
        self.latency = latency
        self.faults: list[Fault] = []
        self.requests: list[tuple[str, str, str]] = []
        #: the most requests the proxy held at once since :meth:`clear`
        self.max_in_flight = 0
        self._in_flight = 0
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                proxy._handle(self)

            def do_HEAD(self) -> None:
                proxy._handle(self)

            def do_PUT(self) -> None:
                proxy._handle(self)

            def do_DELETE(self) -> None:
                proxy._handle(self)

        self._listen(Handler)

    @property
    def endpoint(self) -> str:
        """``host:port`` of the proxy."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """The proxy's base URL."""
        return f"http://{self.endpoint}"

    def fail(
        self, match: str, status: int | None = None, stall: float = 0.0, times: int | None = None
    ) -> Fault:
        """Add a fault (see :class:`Fault`); returns it, to read its ``hits``."""
        fault = Fault(match, status, stall, times)
        with self._lock:
            self.faults.append(fault)
        return fault

    def clear(self) -> None:
        """Remove every fault and forget the counted requests."""
        with self._lock:
            self.faults.clear()
            self.requests.clear()
            self.max_in_flight = 0

    def count(self, match: str = "", method: str | None = None) -> int:
        """Requests seen whose path contains ``match`` (and of ``method``)."""
        with self._lock:
            return sum(
                1 for m, p, _ in self.requests if match in p and (method is None or m == method)
            )

    def _handle(self, request: BaseHTTPRequestHandler) -> None:
        with self._lock:
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)
        try:
            self._answer(request)
        finally:
            with self._lock:
                self._in_flight -= 1

    def _answer(self, request: BaseHTTPRequestHandler) -> None:
        method, path = request.command, request.path
        with self._lock:
            self.requests.append((method, path, request.headers.get("Range", "")))
            fault = next((f for f in self.faults if f.takes(method, path)), None)
        if self.latency:
            time.sleep(self.latency)
        if fault is not None and fault.stall:
            time.sleep(fault.stall)
        if fault is not None and fault.status is not None:
            body = f"<Error><Code>Injected</Code><Message>{fault.status}</Message></Error>"
            request.send_response(fault.status)
            request.send_header("Content-Length", str(len(body)))
            request.end_headers()
            if method != "HEAD":
                request.wfile.write(body.encode())
            return
        length = int(request.headers.get("Content-Length") or 0)
        payload = request.rfile.read(length) if length else None
        upstream = http.client.HTTPConnection("127.0.0.1", self.upstream_port, timeout=60)
        try:
            headers = {k: v for k, v in request.headers.items() if k.lower() != "connection"}
            upstream.request(method, path, body=payload, headers=headers)
            answer = upstream.getresponse()
            data = answer.read()
            request.send_response(answer.status)
            skip = ("transfer-encoding", "connection", "content-length")
            for key, value in answer.getheaders():
                if key.lower() not in skip or (method == "HEAD" and key.lower() == skip[2]):
                    request.send_header(key, value)
            if method != "HEAD":
                request.send_header("Content-Length", str(len(data)))
            request.end_headers()
            if method != "HEAD":
                request.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (a stall past its timeout)
        finally:
            upstream.close()


class STACAPIServer(_HTTPServer):
    """A tiny STAC API on 127.0.0.1: a landing page and ``/search`` (GET and POST), paged.

    It filters by ``collections``, ``bbox`` (against each item's bbox) and the ``query``
    ``{"eo:cloud_cover": {"lt": x}}``, and pages with ``limit`` and a ``token``, as STAC APIs do.

    Args:
        items: the STAC items (dicts) it serves.
    """

    def __init__(self, items: list[dict[str, Any]]) -> None:
        server = self
        self.items = items
        self.searches = 0

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                from urllib.parse import parse_qs, urlsplit

                parts = urlsplit(self.path)
                if parts.path.rstrip("/") == "/search":
                    params = {k: v[0] for k, v in parse_qs(parts.query).items()}
                    body: dict[str, Any] = {}
                    if "collections" in params:
                        body["collections"] = params["collections"].split(",")
                    if "bbox" in params:
                        body["bbox"] = [float(v) for v in params["bbox"].split(",")]
                    for key in ("limit", "token"):
                        if key in params:
                            body[key] = params[key]
                    if "query" in params:
                        body["query"] = json.loads(params["query"])
                    self._json(server._search(body))
                elif parts.path in ("", "/"):
                    self._json(server._landing())
                else:
                    self.send_error(404)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                self._json(server._search(body))

            def _json(self, document: dict[str, Any]) -> None:
                data = json.dumps(document).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/geo+json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._listen(Handler)

    def _landing(self) -> dict[str, Any]:
        return {
            "type": "Catalog",
            "id": "geodino-test",
            "description": "a STAC API for the tests",
            "stac_version": "1.0.0",
            "conformsTo": [
                "https://api.stacspec.org/v1.0.0/core",
                "https://api.stacspec.org/v1.0.0/item-search",
                "https://api.stacspec.org/v1.0.0/item-search#query",
            ],
            "links": [
                {"rel": "self", "href": self.url, "type": "application/json"},
                {"rel": "root", "href": self.url, "type": "application/json"},
                {
                    "rel": "search",
                    "href": f"{self.url}/search",
                    "type": "application/geo+json",
                    "method": "POST",
                },
                {
                    "rel": "search",
                    "href": f"{self.url}/search",
                    "type": "application/geo+json",
                    "method": "GET",
                },
            ],
        }

    def _search(self, body: dict[str, Any]) -> dict[str, Any]:
        self.searches += 1
        found = []
        for item in self.items:
            if body.get("collections") and item.get("collection") not in body["collections"]:
                continue
            if body.get("bbox"):
                w, s, e, n = body["bbox"]
                iw, is_, ie, in_ = item["bbox"]
                if iw > e or ie < w or is_ > n or in_ < s:
                    continue
            limit = ((body.get("query") or {}).get("eo:cloud_cover") or {}).get("lt")
            if limit is not None and not item["properties"]["eo:cloud_cover"] < limit:
                continue
            found.append(item)
        start = int(body.get("token") or 0)
        size = int(body.get("limit") or 10)
        page = found[start : start + size]
        links = []
        if start + size < len(found):
            links.append(
                {
                    "rel": "next",
                    "href": f"{self.url}/search",
                    "method": "POST",
                    "type": "application/geo+json",
                    "body": {**body, "token": str(start + size)},
                }
            )
        return {"type": "FeatureCollection", "features": page, "links": links}
