"""Demo mode fetches only public web pages (issue 14): a visitor of a public Space must not make the server fetch
its own loopback, the private network or the cloud's metadata address, by a literal address, a name, or a redirect.
A real HTTP server on 127.0.0.1 (no request leaves this machine); outside demo mode the same page is fetched."""
from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import core.web as web
from conftest import cli_here
from core.config import demo_mode_from_env, load_settings
from core.errors import InputError
from core.lab import Lab
from core.workspaces import Workspaces
from core.workspaces import demo_mode_from_env as workspaces_rule

FACT = "The Orvik ferry's cook is Tamsin Brell, who bakes rye bread on the crossing every Thursday."
PAGE = f"<html><head><title>Orvik ferry</title></head><body><article><h1>The Orvik ferry</h1><p>{FACT}</p>" \
       f"<p>The ferry crosses the sound four times a day and carries up to forty cars.</p></article></body></html>"
REFUSED = "this demo only fetches public web pages"
PRIVATE_LITERALS = ["http://[::1]/", "http://169.254.169.254/latest/meta-data/", "http://10.0.0.1/",
                    "http://192.168.1.1/", "http://[fc00::1]/", "http://[::ffff:127.0.0.1]/", "http://172.16.0.1/",
                    "http://[fe80::1]/", "http://0.0.0.0/", "http://100.64.0.1/", "http://[64:ff9b::7f00:1]/",
                    "http://[2002:7f00:1::]/"]
PUBLIC_NAME = "public.example"  # counts as public in the tests that wrap the check (it is this machine)
EXAMPLE_PUBLIC_IP = "93.184.216.34"


class _Site(BaseHTTPRequestHandler):
    seen: list = []  # (path, Host header) of every request the server received
    routes: dict = {}

    def do_GET(self):  # noqa: N802 - the name http.server calls
        self.seen.append((self.path, self.headers.get("Host")))
        status, headers, body = self.routes.get(self.path, (404, {"Content-Type": "text/plain"}, b"not found"))
        self.send_response(status)
        for key, value in {**headers, "Content-Length": str(len(body))}.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Site)
    port = httpd.server_address[1]
    html = {"Content-Type": "text/html; charset=utf-8"}
    _Site.routes = {
        "/page.html": (200, html, PAGE.encode()),
        "/secret.html": (200, html, b"<html><body><p>SECRET_ONLY_FOR_THIS_MACHINE</p></body></html>"),
        "/hop-loopback": (302, {"Location": f"http://127.0.0.1:{port}/secret.html"}, b""),
        "/hop-localhost": (302, {"Location": f"http://localhost:{port}/secret.html"}, b""),
        "/hop-ipv6": (301, {"Location": f"http://[::1]:{port}/secret.html"}, b""),
        "/hop-metadata": (307, {"Location": "http://169.254.169.254/latest/meta-data/"}, b""),
        "/hop-same-host": (302, {"Location": "/page.html"}, b""),
    }
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{port}", port
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def seen():
    _Site.seen = []
    return _Site.seen


# Every socket connect in this process is an audit event; while a test holds `no_connect`, any is recorded.
_connects: list | None = None


def _audit(event, args):
    if event == "socket.connect" and _connects is not None:
        _connects.append(args[1])


sys.addaudithook(_audit)


@pytest.fixture
def no_connect():
    """Fails the test if anything connects a socket while it runs (refusals must come before any connection)."""
    global _connects
    _connects = []
    yield
    found, _connects = _connects, None
    assert found == [], f"a connection was attempted: {found}"


@pytest.fixture
def environment(monkeypatch):
    """No demo mode, Space or proxy from the environment running the tests; proxies set where a test says."""
    for key in ("LAB_DEMO_MODE", "SPACE_ID", "http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy",
                "ALL_PROXY", "no_proxy", "NO_PROXY"):
        monkeypatch.delenv(key, raising=False)
    return monkeypatch


@pytest.fixture
def public_test_host(monkeypatch, server):
    """PUBLIC_NAME is this machine (127.0.0.1), and passes the check: the one exception, for a first hop. Every
    other host goes through the real check, and PUBLIC_NAME's connection is still made by the checked path."""
    real = web.resolve_public

    def resolve(host, port):
        if host == PUBLIC_NAME:
            return socket.getaddrinfo("127.0.0.1", port, type=socket.SOCK_STREAM)
        return real(host, port)

    monkeypatch.setattr(web, "resolve_public", resolve)
    return f"{PUBLIC_NAME}:{server[1]}"


def make_lab(data_dir: Path, demo: bool) -> Lab:
    return Lab(load_settings(data_dir=data_dir, model_cache_dir=Path(os.environ["LAB_MODEL_CACHE"]), demo_mode=demo))


def refusal(url: str, tmp_path: Path) -> str:
    with pytest.raises(InputError) as caught:
        web.fetch_url(url, tmp_path / "fetched", 5, timeout=10, public_only=True)
    assert caught.value.subject == url
    assert not (tmp_path / "fetched").exists() or list((tmp_path / "fetched").iterdir()) == []
    return caught.value.reason


# ---- the knowledge base, the workspaces and the CLI ----------------------------------------------------------------

def test_demo_lab_refuses_a_loopback_page_and_stores_nothing(server, seen, data_dir, environment):
    lab = make_lab(data_dir, demo=True)
    url = f"http://{server[0]}/page.html"
    [result] = lab.kbs.ingest([url])
    assert result.status == "failed" and result.file == url
    assert result.message == f"{REFUSED} (127.0.0.1 is a private address)"
    assert lab.kbs.names() == [] and seen == []  # nothing stored, and the server was never asked


def test_demo_workspaces_refuse_whatever_the_environment_says(server, seen, tmp_path, environment):
    environment.setenv("LAB_DEMO_MODE", "0")
    settings = load_settings(data_dir=tmp_path / "data", model_cache_dir=Path(os.environ["LAB_MODEL_CACHE"]))
    assert settings.demo_mode is False
    lab = Workspaces(settings, demo=True).lab("visitor-0123456789")
    assert lab.settings.demo_mode is True
    [result] = lab.kbs.ingest([f"http://localhost:{server[1]}/page.html"])
    assert result.status == "failed" and result.message == f"{REFUSED} (localhost resolves to a private address)"
    assert lab.kbs.names() == [] and seen == []
    assert Workspaces(settings.with_(data_dir=tmp_path / "shared"), demo=False).lab(None).settings.demo_mode is False


def test_a_demo_workspace_fetches_a_few_pages_per_add(server, seen, tmp_path, environment):
    """One Add is one use of the rate limit, and each fetch may take minutes: a demo caps the pages per Add."""
    settings = load_settings(data_dir=tmp_path / "data", model_cache_dir=Path(os.environ["LAB_MODEL_CACHE"]))
    lab = Workspaces(settings, demo=True).lab("visitor-0123456789")
    urls = [f"https://example.com/page-{i}" for i in range(lab.quota.limits.max_web_pages + 1)]
    with pytest.raises(InputError, match=f"{len(urls)} web addresses; this demo fetches at most"):
        lab.kbs.ingest(urls)
    assert lab.kbs.names() == [] and seen == []


def test_normal_mode_still_fetches_a_local_page_and_finds_it(server, seen, data_dir, environment):
    lab = make_lab(data_dir, demo=False)
    [result] = lab.kbs.ingest([f"http://{server[0]}/page.html"])
    assert result.status == "added", result.message
    hits, _ = lab.kbs.search("Who is the cook on the Orvik ferry?")
    assert "Tamsin Brell" in hits[0].text
    assert seen == [("/page.html", server[0])]


def test_cli_in_demo_mode_refuses_and_exits_1(server, seen, data_dir, environment):
    url = f"http://{server[0]}/page.html"
    done = cli_here(["ingest", url], data_dir, LAB_DEMO_MODE="1")
    assert done.returncode == 1
    assert f"failed  {url}: {REFUSED} (127.0.0.1 is a private address)" in done.stdout
    assert seen == []
    assert cli_here(["ingest", url], data_dir, LAB_DEMO_MODE="0").returncode == 0  # the same page, not in demo mode


def test_demo_mode_setting_lives_in_config(environment):
    assert workspaces_rule is demo_mode_from_env
    for env, expected in [({}, False), ({"SPACE_ID": "user/space"}, True), ({"LAB_DEMO_MODE": "yes"}, True),
                          ({"SPACE_ID": "user/space", "LAB_DEMO_MODE": "0"}, False), ({"LAB_DEMO_MODE": "on"}, True),
                          ({"LAB_DEMO_MODE": "off"}, False)]:
        for key in ("LAB_DEMO_MODE", "SPACE_ID"):
            environment.delenv(key, raising=False)
        for key, value in env.items():
            environment.setenv(key, value)
        assert demo_mode_from_env(env) is expected and load_settings().demo_mode is expected, env


# ---- what is refused, and that nothing is connected to first -------------------------------------------------------

@pytest.mark.parametrize("url", PRIVATE_LITERALS)
def test_private_addresses_are_refused_without_a_connection(url, tmp_path, no_connect, environment):
    host = url.split("//")[1].split("/")[0].strip("[]")
    assert refusal(url, tmp_path) == f"{REFUSED} ({host} is a private address)"


def test_names_that_resolve_inward_are_refused_without_a_connection(tmp_path, no_connect, environment):
    real = socket.getaddrinfo
    answers = {"intranet.example": ["127.0.0.1"], "metadata.example": ["169.254.169.254"],
               "mixed.example": [EXAMPLE_PUBLIC_IP, "10.0.0.5"], "v6.example": ["::1"]}

    def getaddrinfo(host, port, *args, **kwargs):
        if host in answers:
            return [(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port))
                    for a in answers[host]]
        return real(host, port, *args, **kwargs)

    environment.setattr(socket, "getaddrinfo", getaddrinfo)
    for host in ["localhost", "127.1", "2130706433", *answers]:
        assert refusal(f"http://{host}/page.html", tmp_path) == f"{REFUSED} ({host} resolves to a private address)"


def test_the_connection_goes_to_the_address_that_was_checked(tmp_path, environment):
    """A name that answers public first and private next (DNS rebinding) is resolved once: the socket connects to
    the checked public address, never asks again. (The connection is stopped before it leaves this machine.)"""
    real, asked, connected = socket.getaddrinfo, [], []

    def getaddrinfo(host, port, *args, **kwargs):
        if host == "rebind.example":
            asked.append(host)
            address = EXAMPLE_PUBLIC_IP if len(asked) == 1 else "127.0.0.1"
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))]
        return real(host, port, *args, **kwargs)

    def create_connection(address, *args, **kwargs):
        connected.append(address)
        raise ConnectionRefusedError(111, "refused by the test")

    environment.setattr(socket, "getaddrinfo", getaddrinfo)
    environment.setattr(socket, "create_connection", create_connection)
    assert refusal("http://rebind.example:8080/page.html", tmp_path) == "could not connect (connection refused)"
    assert connected == [(EXAMPLE_PUBLIC_IP, 8080)] and asked == ["rebind.example"]


# ---- redirects and proxies -----------------------------------------------------------------------------------------

def test_a_public_page_is_fetched_by_the_checked_connection_with_its_own_host_header(
        public_test_host, seen, tmp_path, environment):
    path = web.fetch_url(f"http://{public_test_host}/hop-same-host", tmp_path, 5, public_only=True)
    assert FACT in path.read_text(encoding="utf-8-sig")
    assert seen == [("/hop-same-host", public_test_host), ("/page.html", public_test_host)]


@pytest.mark.parametrize("hop, target", [("hop-loopback", "127.0.0.1 is a private address"),
                                         ("hop-localhost", "localhost resolves to a private address"),
                                         ("hop-ipv6", "::1 is a private address"),
                                         ("hop-metadata", "169.254.169.254 is a private address")])
def test_a_redirect_from_a_public_page_to_a_private_address_is_refused(hop, target, public_test_host, seen, tmp_path,
                                                                       environment):
    url = f"http://{public_test_host}/{hop}"
    assert refusal(url, tmp_path) == f"{REFUSED} ({target})"
    assert seen == [(f"/{hop}", public_test_host)]  # the first hop only: the secret page was never asked for


@pytest.fixture
def tls_server(tmp_path, public_test_host, monkeypatch):
    """The same site over https, with a certificate for PUBLIC_NAME only (not for 127.0.0.1), trusted by the
    fetcher for this test; yields (host:port, the TLS server names the clients sent)."""
    if not shutil.which("openssl"):
        pytest.skip("needs the openssl command to make a certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "2", "-subj", f"/CN={PUBLIC_NAME}", "-addext",
                    f"subjectAltName=DNS:{PUBLIC_NAME}"], check=True, capture_output=True, timeout=60)
    names = []
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    context.sni_callback = lambda sock, name, ctx: names.append(name)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Site)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setattr(ssl, "_create_default_https_context",
                        lambda *args, **kwargs: ssl.create_default_context(cafile=str(cert)))
    yield f"{PUBLIC_NAME}:{httpd.server_address[1]}", names
    httpd.shutdown()
    httpd.server_close()


def test_https_keeps_the_hosts_name_for_tls_and_checks_redirects(tls_server, seen, tmp_path, environment):
    host, names = tls_server
    path = web.fetch_url(f"https://{host}/page.html", tmp_path, 5, public_only=True)
    # Connected to 127.0.0.1, yet the certificate was checked against the name, which the server was sent (SNI).
    assert FACT in path.read_text(encoding="utf-8-sig")
    assert names == [PUBLIC_NAME] and seen == [("/page.html", host)]
    assert refusal(f"https://{host}/hop-loopback", tmp_path) == f"{REFUSED} (127.0.0.1 is a private address)"
    assert seen[-1] == ("/hop-loopback", host)


def test_demo_mode_uses_no_proxy(public_test_host, seen, tmp_path, environment):
    """A proxy would resolve and connect on its own, past the check: demo mode connects directly. (Were the proxy
    used, it is on 127.0.0.1 and the check would refuse it.)"""
    for key in ("http_proxy", "HTTP_PROXY", "https_proxy", "all_proxy"):
        environment.setenv(key, "http://127.0.0.1:9")
    path = web.fetch_url(f"http://{public_test_host}/page.html", tmp_path, 5, public_only=True)
    assert FACT in path.read_text(encoding="utf-8-sig") and seen == [("/page.html", public_test_host)]


def test_the_address_check():
    for address in ["8.8.8.8", "2606:4700:4700::1111", "::ffff:8.8.8.8", EXAMPLE_PUBLIC_IP]:
        assert web.is_public_address(address), address
    for address in ["127.0.0.1", "127.5.6.7", "10.1.2.3", "172.31.255.255", "192.168.0.1", "169.254.169.254",
                    "100.64.0.1", "0.0.0.0", "224.0.0.1", "255.255.255.255", "::", "::1", "::127.0.0.1", "fc00::1",
                    "fd12:3456::1", "fe80::1%eth0", "::ffff:127.0.0.1", "::ffff:10.0.0.1", "64:ff9b::a00:1",
                    "2002:a00:1::", "2001:db8::1", "ff02::1", "not an address"]:
        assert not web.is_public_address(address), address
