"""Fetch a web page or document by URL into a local file, or say exactly why not. Standard library only.
In demo mode (public_only) only public addresses are fetched, on every redirect hop too (the end of this module).

The file is then read like an upload (core.documents); its name comes from the URL, so citations show the source.
"""
from __future__ import annotations

import codecs
import http.client
import ipaddress
import re
import socket
import ssl
import time
import urllib.error
import urllib.request
import zlib
from pathlib import Path
from urllib.parse import unquote, unquote_plus, urljoin, urlsplit

from core.documents import display_name
from core.errors import InputError

# What a server may send, and the extension the file is read as.
CONTENT_TYPES = {
    "text/html": ".html",
    "application/xhtml+xml": ".html",
    "application/pdf": ".pdf",
    "text/plain": ".txt",
    "text/markdown": ".md",
    "text/x-markdown": ".md",
    "text/csv": ".csv",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": ".docx",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet": ".xlsx",
    "application/vnd.openxmlformats-officedocument.presentationml.presentation": ".pptx",
    "image/png": ".png",
    "image/jpeg": ".jpg",
    "image/tiff": ".tiff",
}
TEXT_EXTENSIONS = {".html", ".txt", ".md", ".csv"}
SAME_EXTENSION = {".htm": ".html", ".markdown": ".md", ".jpeg": ".jpg", ".tif": ".tiff"}
USER_AGENT = "Mozilla/5.0 (compatible; rag-finetune-lab/1.0; document fetcher)"
ACCEPT = "text/html,application/xhtml+xml,application/pdf,text/markdown,text/plain;q=0.9,text/csv;q=0.8,*/*;q=0.1"
MAX_SECONDS = 300  # the whole download, however slowly the bytes trickle in
_SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*://", re.IGNORECASE)
_CHUNK = 64 * 1024


def looks_like_url(item) -> bool:
    """A string with a scheme (http://, https://, file://, ...): fetched, or refused with a reason, never read as a path."""
    return isinstance(item, str) and bool(_SCHEME.match(item.strip()))


def as_url(text: str) -> str:
    """What a person typed into a URL box: 'example.com/page' means https://example.com/page."""
    text = text.strip()
    return text if looks_like_url(text) else f"https://{text}"


def url_file_name(url: str, extension: str) -> str:
    """The stored name: host, port, path and query, made safe, e.g. 127.0.0.1_8000_docs_page.html."""
    parts = urlsplit(url)
    host = (parts.hostname or "page") + (f":{parts.port}" if parts.port else "")
    path = unquote(parts.path)
    suffix = Path(path).suffix.lower()
    if suffix and SAME_EXTENSION.get(suffix, suffix) == extension:
        path = path[: -len(suffix)]  # /guide.htm -> guide.html, not guide.htm.html
    raw = "/".join(p for p in (host, path, unquote_plus(parts.query)) if p)
    raw = re.sub(r"[^\w.\-()+,]+", "_", raw).strip("._")
    return display_name(raw[: 200 - len(extension)] + extension)


def fetch_url(url: str, dest_dir: Path, max_mb: int, timeout: float = 20, public_only: bool = False) -> Path:
    """Download `url` into `dest_dir` (created if missing) and return the file's path.

    Only http and https; redirects are followed (to http/https only); the download stops as soon as it passes
    `max_mb`; the server's content-type decides how the file is read, and anything not readable is refused.
    `public_only` (demo mode): every hop goes only to public addresses, without a proxy (see _public_opener).
    Every failure is an InputError naming the URL and the reason."""
    url = url.strip()
    subject = url if len(url) <= 300 else url[:297] + "..."
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise InputError(f"only http:// and https:// web addresses can be fetched, not {scheme or '(none)'}://",
                         subject=subject)
    try:
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number in range
    except ValueError:
        raise InputError("the address has an invalid port", subject=subject) from None
    if not parts.hostname:
        raise InputError("the address has no host name", subject=subject)
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT, "Accept": ACCEPT})
    opener = _public_opener() if public_only else urllib.request.build_opener(_ProxyHandler(), _RedirectHandler())
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    try:
        with opener.open(request, timeout=timeout) as response:
            extension = _extension(response.headers.get("Content-Type"), subject)
            data = _download(response, max_mb, timeout, subject)
            charset = response.headers.get_content_charset()
    except InputError as exc:  # from the checks above, or a refused redirect: named after the address asked for
        raise InputError(exc.reason, subject=subject) from None
    except urllib.error.HTTPError as exc:
        raise InputError(f"the server answered HTTP {exc.code} ({exc.reason})", subject=subject) from None
    except urllib.error.URLError as exc:
        raise InputError(_connection_problem(exc.reason, parts.hostname, timeout), subject=subject) from None
    except (OSError, http.client.HTTPException, ValueError) as exc:
        raise InputError(_connection_problem(exc, parts.hostname, timeout), subject=subject) from None
    if not data:
        raise InputError("the server sent an empty response", subject=subject)
    if extension in TEXT_EXTENSIONS:
        data = _as_utf8(data, charset)
    path = dest_dir / url_file_name(url, extension)
    path.write_bytes(data)
    return path


def _extension(content_type: str | None, subject: str) -> str:
    kind = (content_type or "").split(";")[0].strip().lower()
    if kind not in CONTENT_TYPES:
        shown = kind or "missing"
        raise InputError(f"not a web page or supported document (content-type {shown})", subject=subject)
    return CONTENT_TYPES[kind]


def _download(response, max_mb: int, timeout: float, subject: str) -> bytes:
    limit = max_mb * 1024 * 1024
    too_big = f"the download is over the {max_mb} MB limit"
    declared = response.headers.get("Content-Length")
    if declared and declared.strip().isdigit() and int(declared) > limit:
        raise InputError(f"the download is {int(declared) / 1048576:.1f} MB, over the {max_mb} MB limit", subject=subject)
    encoding = (response.headers.get("Content-Encoding") or "identity").strip().lower()
    if encoding in ("gzip", "x-gzip", "deflate"):
        inflater = zlib.decompressobj(47)  # gzip or zlib header, detected
    elif encoding == "identity":
        inflater = None
    else:
        raise InputError(f"the server sent data compressed as {encoding!r}, which cannot be read", subject=subject)
    deadline = time.monotonic() + max(MAX_SECONDS, timeout)
    received = bytearray()
    while chunk := response.read(_CHUNK):
        if inflater is not None:
            try:
                chunk = inflater.decompress(chunk, limit + 1 - len(received))
            except zlib.error:
                raise InputError("the server sent corrupt compressed data", subject=subject) from None
        received += chunk
        if len(received) > limit:
            raise InputError(too_big, subject=subject)
        if time.monotonic() > deadline:
            raise InputError(f"the download took longer than {max(MAX_SECONDS, timeout):.0f} s", subject=subject)
    if inflater is not None:
        received += inflater.flush()
        if len(received) > limit:
            raise InputError(too_big, subject=subject)
    return bytes(received)


def _as_utf8(data: bytes, charset: str | None) -> bytes:
    """Text in the charset the server named, saved as UTF-8 with a byte-order mark so the reader needs no guess.
    Bytes that are already valid UTF-8 are kept (a wrong charset header is a common server mistake)."""
    if not charset or data.startswith((codecs.BOM_UTF8, codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return data
    try:
        data.decode("utf-8")
        return data
    except UnicodeDecodeError:
        pass
    charset = "cp1252" if charset.lower() in ("iso-8859-1", "latin-1", "latin1", "us-ascii", "ascii") else charset
    try:
        return codecs.BOM_UTF8 + data.decode(charset).encode("utf-8")
    except (LookupError, UnicodeDecodeError):
        return data  # an unknown or wrong charset: the reader detects the encoding itself


def _connection_problem(reason, host: str, timeout: float) -> str:
    if isinstance(reason, socket.gaierror):
        return f"could not find the host {host} (DNS lookup failed: {reason.strerror or reason})"
    if isinstance(reason, (TimeoutError, socket.timeout)):
        return f"no answer from the server within {timeout:g} s"
    if isinstance(reason, ConnectionRefusedError):
        return "could not connect (connection refused)"
    if isinstance(reason, ssl.SSLCertVerificationError):
        return f"the site's TLS certificate could not be verified ({reason.verify_message})"
    if isinstance(reason, ssl.SSLError):
        return f"the secure (TLS) connection failed ({reason.reason or reason})"
    if isinstance(reason, (ConnectionError, http.client.HTTPException)):
        return f"the connection broke off ({type(reason).__name__})"
    detail = getattr(reason, "strerror", None) or str(reason) or type(reason).__name__
    return f"could not connect ({detail})"


def _is_loopback(host: str | None) -> bool:
    host = (host or "").strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _ProxyHandler(urllib.request.ProxyHandler):
    """The environment's proxies (and its no_proxy list), never for this machine itself: a proxy cannot reach it."""

    def proxy_open(self, req, proxy, type):  # noqa: A002 - the name urllib calls it with
        if _is_loopback(urlsplit(req.full_url).hostname):
            return None
        return super().proxy_open(req, proxy, type)


class _RedirectHandler(urllib.request.HTTPRedirectHandler):
    """Redirects are followed only to http and https (urllib alone would also follow one to ftp)."""

    def http_error_302(self, req, fp, code, msg, headers):
        location = headers.get("Location") or headers.get("URI")
        if location:
            scheme = urlsplit(urljoin(req.full_url, location.strip())).scheme.lower()
            if scheme not in ("http", "https"):
                fp.close()
                raise InputError(f"the server redirected to a {scheme}:// address, which is not fetched")
        return super().http_error_302(req, fp, code, msg, headers)

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302


# ---- demo mode: public addresses only ------------------------------------------------------------------------------
# A visitor of a public Space must not make the server fetch its own loopback, the private network or the cloud's
# metadata address. The host is resolved once, every address it resolves to is checked, and the connection goes to
# a checked address itself (so a second DNS answer cannot swap in a private one); each redirect hop is a new
# connection and is checked the same way. No proxy is used: a proxy would resolve and connect on its own.
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")  # ::, ::1, the deprecated ::a.b.c.d


def is_public_address(address: str) -> bool:
    """A globally routable unicast address: not loopback, private, link-local, shared, reserved or multicast, nor an
    IPv6 form of one of those (IPv4-mapped ::ffff:a.b.c.d, NAT64, 6to4)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if ip.version == 6:
        if ip in _IPV4_COMPATIBLE:
            return False
        embedded = ip.ipv4_mapped or ip.sixtofour or (
            ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF) if ip in _NAT64 else None)
        if embedded is not None and not is_public_address(str(embedded)):
            return False
    return ip.is_global and not ip.is_multicast


def resolve_public(host: str, port: int) -> list[tuple]:
    """getaddrinfo's answers for `host`, each one checked public; an InputError if any is not (a name that also
    points inward is refused whole). A DNS failure is raised as socket.gaierror, as for any fetch."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    if not all(is_public_address(sockaddr[0]) for *_, sockaddr in infos):
        # Which private address is not said: the message would map the server's own network for a visitor.
        where = "is a private address" if _is_ip_literal(host) else "resolves to a private address"
        raise InputError(f"this demo only fetches public web pages ({host} {where})")
    return infos


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


def _connect_public(address, timeout, source_address=None) -> socket.socket:
    """socket.create_connection, but to a checked address of the host only (tried in getaddrinfo's order)."""
    host, port = address
    error: OSError | None = None
    for *_, sockaddr in resolve_public(host, port):
        try:
            return socket.create_connection((sockaddr[0], port), timeout, source_address)  # an IP: no DNS again
        except OSError as exc:
            error = exc
    raise error or OSError(f"no address found for {host}")


class _CheckedConnect:
    """For http.client's connections: the socket is opened by _connect_public instead of socket.create_connection
    (http.client opens it through the attribute _create_connection); the rest is http.client's own, so the Host
    header and, for https, the TLS server name and the certificate check stay those of the host in the URL."""

    def connect(self):
        opened = []

        def create_connection(*args):
            opened.append(_connect_public(*args))
            return opened[-1]

        self._create_connection = create_connection
        super().connect()
        if not opened:  # a future http.client that opens its socket some other way: refused before the request
            self.close()
            raise InputError("this Python's http.client cannot be limited to public addresses; nothing is fetched")


class _PublicHTTPConnection(_CheckedConnect, http.client.HTTPConnection):
    pass


class _PublicHTTPSConnection(_CheckedConnect, http.client.HTTPSConnection):
    pass


class _PublicHTTPHandler(urllib.request.HTTPHandler):
    def do_open(self, http_class, req, **kwargs):
        return super().do_open(_PublicHTTPConnection, req, **kwargs)


class _PublicHTTPSHandler(urllib.request.HTTPSHandler):
    def do_open(self, http_class, req, **kwargs):
        return super().do_open(_PublicHTTPSConnection, req, **kwargs)


def _public_opener() -> urllib.request.OpenerDirector:
    """An opener for demo mode: no proxy (ProxyHandler({}) ignores the environment's), checked connections for
    http and https, and the usual redirect rules; a redirect is opened by this same opener, so checked again."""
    return urllib.request.build_opener(urllib.request.ProxyHandler({}), _PublicHTTPHandler(), _PublicHTTPSHandler(),
                                       _RedirectHandler())
