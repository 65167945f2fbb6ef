"""URL normalization for WebText's URL-level de-duplication, and the host/domain helpers the filters use.

Reddit links one page under many spellings (``HTTP://Example.com:80/a/?utm_source=x#top`` and
``http://example.com/a``); WebText sums karma per link and scrapes each page once, so links are keyed by
:func:`normalize_url`. The normalization is conservative: it only rewrites what cannot change the page a
server returns (RFC 3986 syntax-based normalization) plus a documented set of tracking parameters.
``http`` vs ``https`` and ``www.`` vs bare hosts stay distinct: they are different URLs, and nothing
guarantees they serve the same page.
"""

from __future__ import annotations

import re
from urllib.parse import SplitResult, unquote, urlsplit

# Query parameters that only carry campaign/click attribution (never page content). Matched on the
# lower-cased key; every key starting with one of TRACKING_PREFIXES is dropped too.
TRACKING_PARAMS: frozenset[str] = frozenset(
    {
        "fbclid",  # Facebook click id
        "gclid",  # Google Ads click id
        "dclid",  # Google Display click id
        "gclsrc",
        "msclkid",  # Microsoft Ads click id
        "yclid",  # Yandex click id
        "igshid",  # Instagram share id
        "mc_cid",  # Mailchimp campaign id
        "mc_eid",  # Mailchimp email id
        "mkt_tok",  # Marketo
        "ref_src",  # Twitter embeds
        "ref_url",
        "_hsenc",  # HubSpot
        "_hsmi",
        "_ga",  # Google Analytics cross-domain linker
        "_gl",
        "vero_id",
        "oly_anon_id",
        "oly_enc_id",
        "wickedid",
        "rb_clickid",
        "s_cid",  # Adobe campaign id
    }
)
TRACKING_PREFIXES: tuple[str, ...] = ("utm_",)

# Two-label public suffixes under which a registered domain has three labels (bbc.co.uk, abc.net.au).
# A deliberate simplification of the Public Suffix List (which needs a download and has ~9,000 rules):
# the common country second levels only; everything else is "last two labels".
TWO_LEVEL_SUFFIXES: frozenset[str] = frozenset(
    f"{second}.{tld}"
    for tld, seconds in {
        "uk": "co org ac gov me ltd plc net sch nhs police",
        "au": "com net org edu gov asn id",
        "nz": "co org net govt ac school geek",
        "jp": "co ne or ac go ad ed gr lg",
        "kr": "co or ne ac go re",
        "in": "co net org ac gov edu nic res firm gen ind",
        "br": "com net org gov edu art blog",
        "cn": "com net org gov edu ac",
        "mx": "com org gob edu net",
        "za": "co org gov ac net web",
        "tw": "com org edu gov net idv",
        "hk": "com org edu gov net idv",
        "sg": "com org edu gov net",
        "tr": "com org edu gov net gen",
        "il": "co org ac gov net muni",
        "ar": "com org gob edu net",
        "co": "com org edu gov net",
        "id": "co or ac go net web",
        "my": "com org edu gov net",
        "ph": "com org edu gov net",
        "pk": "com org edu gov net",
        "vn": "com org edu gov net",
        "ua": "com org edu gov net",
        "th": "co or ac go in",
        "eg": "com org edu gov",
        "sa": "com org edu gov",
        "ng": "com org edu gov",
        "ke": "co or ac go",
        "ru": "com org net",
        "pl": "com org net",
        "es": "com org nom gob edu",
        "fr": "asso com gouv",
    }.items()
    for second in seconds.split()
)

_DEFAULT_PORTS = {"http": 80, "https": 443}
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
# Characters that may stand literally in a path or query (RFC 3986 pchar + "/" + "?"), besides "%".
_ALLOWED = _UNRESERVED | frozenset("!$&'()*+,;=:@/?")
_HEX = frozenset("0123456789abcdefABCDEF")
_HOST_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def normalize_url(url: str) -> str | None:
    """The canonical spelling of an http(s) URL, or None when it is not one (garbage, other schemes).

    Lower-cases scheme and host, IDNA-encodes the host, drops the default port, user info and fragment,
    drops tracking parameters (TRACKING_PARAMS, ``utm_*``), sorts the remaining query parameters,
    decodes percent-escapes of unreserved characters and upper-cases the others, resolves ``.``/``..``
    path segments and removes a trailing slash (the root stays ``/``).
    """
    if not isinstance(url, str):
        return None
    text = url.strip()
    if not text or _CONTROL.search(text):
        return None
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:  # bad IPv6 brackets, a port that is not a number or out of range
        return None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        return None
    host = _normalize_host(parts)
    if host is None:
        return None
    netloc = host if port is None or port == _DEFAULT_PORTS[scheme] else f"{host}:{port}"
    path = _remove_dot_segments(_normalize_escapes(parts.path)) or "/"
    if len(path) > 1:
        path = path.rstrip("/") or "/"
    query = _normalize_query(parts.query)
    return f"{scheme}://{netloc}{path}" + (f"?{query}" if query else "")


def host_of(url: str) -> str:
    """The lower-cased, IDNA-encoded host of ``url`` without port, or ``""`` when it has none."""
    try:
        host = _normalize_host(urlsplit(url.strip()))
    except ValueError:
        return ""
    return host or ""


def registered_domain(host: str) -> str:
    """The domain a host was registered under: ``news.bbc.co.uk`` -> ``bbc.co.uk``, ``a.b.com`` -> ``b.com``.

    A simplification of the Public Suffix List: the last two labels, or the last three when the last two
    are one of TWO_LEVEL_SUFFIXES. Private suffixes (``blogspot.com``, ``github.io``) are not special:
    every blog on them shares one registered domain. IP addresses come back unchanged.
    """
    host = host.strip().rstrip(".").lower()
    if not host or ":" in host or host.startswith("[") or host.replace(".", "").isdigit():
        return host
    labels = host.split(".")
    keep = 3 if len(labels) >= 3 and ".".join(labels[-2:]) in TWO_LEVEL_SUFFIXES else 2
    return ".".join(labels[-keep:])


def _normalize_host(parts: SplitResult) -> str | None:
    """Lower-case, IDNA-encoded host (IPv6 kept in brackets); None when missing or malformed."""
    host = parts.hostname  # already lower-cased, user info and port removed
    if not host:
        return None
    if ":" in host:  # an IPv6 literal; urlsplit validated the brackets
        return f"[{host}]"
    host = unquote(host).rstrip(".")
    if not host:
        return None
    try:
        ascii_host = host.encode("idna").decode("ascii").lower()
    except UnicodeError:  # empty label, label over 63 characters, characters IDNA forbids
        return None
    labels = ascii_host.split(".")
    if len(ascii_host) > 253 or not all(_HOST_LABEL.fullmatch(label) for label in labels):
        return None
    return ascii_host


def _normalize_escapes(text: str) -> str:
    """Percent-encoding in RFC 3986 normal form: unreserved characters decoded, escapes upper-cased,
    characters that cannot stand in a URL (spaces, non-ASCII, a stray ``%``) encoded as UTF-8."""
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        char = text[i]
        if char == "%" and i + 2 < n and text[i + 1] in _HEX and text[i + 2] in _HEX:
            decoded = chr(int(text[i + 1 : i + 3], 16))
            out.append(decoded if decoded in _UNRESERVED else "%" + text[i + 1 : i + 3].upper())
            i += 3
            continue
        if char in _ALLOWED:
            out.append(char)
        else:
            out.extend(f"%{byte:02X}" for byte in char.encode("utf-8", "surrogatepass"))
        i += 1
    return "".join(out)


def _remove_dot_segments(path: str) -> str:
    """``/a/./b/../c`` -> ``/a/c`` (RFC 3986 section 5.2.4), keeping a trailing slash where one was."""
    if "." not in path:
        return path
    out: list[str] = []
    segments = path.split("/")
    for segment in segments[1:] if path.startswith("/") else segments:
        if segment == "..":
            if out:
                out.pop()
        elif segment != ".":
            out.append(segment)
    if segments[-1] in (".", ".."):
        out.append("")
    return "/" + "/".join(out)


def _normalize_query(query: str) -> str:
    """Query parameters with tracking ones removed, escapes normalized, sorted by key then value."""
    if not query:
        return ""
    kept: list[tuple[str, str]] = []
    for item in query.split("&"):
        if not item:
            continue
        key, sep, value = item.partition("=")
        if _is_tracking(unquote(key)):
            continue
        kept.append((_normalize_escapes(key), sep + _normalize_escapes(value)))
    kept.sort()
    return "&".join(key + value for key, value in kept)


def _is_tracking(key: str) -> bool:
    key = key.strip().lower()
    return key in TRACKING_PARAMS or key.startswith(TRACKING_PREFIXES)
