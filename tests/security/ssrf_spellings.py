"""Spellings of internal addresses an SSRF guard must refuse, shared by the image-URL and the
webhook tests. ``{port}`` is the port of a live server on 127.0.0.1: the loopback spellings would
reach it if the guard let them through.
"""

from __future__ import annotations

INTERNAL_URLS: list[tuple[str, str]] = [
    ("loopback", "http://127.0.0.1:{port}/ok.png"),
    ("localhost", "http://localhost:{port}/ok.png"),
    ("ipv6-loopback", "http://[::1]:{port}/ok.png"),
    ("decimal", "http://2130706433:{port}/ok.png"),  # 127.0.0.1 as one number
    ("hex", "http://0x7f000001:{port}/ok.png"),
    ("short", "http://127.1:{port}/ok.png"),
    ("octal", "http://0177.0.0.1:{port}/ok.png"),  # the URL parser refuses it outright
    ("unspecified", "http://0.0.0.0:{port}/ok.png"),
    ("ipv4-mapped", "http://[::ffff:127.0.0.1]:{port}/ok.png"),
    ("ipv4-mapped-hex", "http://[::ffff:7f00:1]:{port}/ok.png"),
    ("ipv4-compatible", "http://[::127.0.0.1]:{port}/ok.png"),
    ("6to4-loopback", "http://[2002:7f00:1::1]:{port}/ok.png"),
    ("6to4-metadata", "http://[2002:a9fe:a9fe::1]/latest/meta-data/"),
    ("nat64-loopback", "http://[64:ff9b::7f00:1]:{port}/ok.png"),
    ("nat64-metadata", "http://[64:ff9b::a9fe:a9fe]/latest/meta-data/"),
    ("teredo", "http://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/ok.png"),
    ("site-local", "http://[fec0::1]/ok.png"),
    ("link-local-metadata", "http://169.254.169.254/latest/meta-data/iam/security-credentials/"),
    ("link-local-v6", "http://[fe80::1]/ok.png"),
    ("private-10", "http://10.0.0.1/x.png"),
    ("private-192", "http://192.168.0.1/x.png"),
    ("cgnat", "http://100.64.0.1/x.png"),
    ("multicast", "http://224.0.0.1/x.png"),
]

#: What the guard's refusal says (the message of the error or of the log line).
REFUSED = "refused to"


def refusal(name: str) -> str:
    """What refusing the spelling ``name`` says: the guard's words, or the URL parser's."""
    return "Invalid IPv4 address" if name == "octal" else REFUSED
