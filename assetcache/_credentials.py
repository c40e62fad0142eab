"""Credentials given to the cache: checked at once, kept out of everything stored or shown.

- :func:`check_api_key` refuses a key that no HTTP header can carry (control
  characters, non-ASCII, surrounding whitespace) as a configuration error,
  naming the position and kind of the character, never the key.
- :func:`split_url_credentials` takes ``user:password@`` out of an API URL: the
  URL without them is what is stored (namespace), shown and logged; the pair is
  sent as ``Proxy-Authorization`` (Basic), so it never replaces the Bearer key.
"""

from __future__ import annotations

import base64
import urllib.parse

from ._errors import ConfigurationError


def check_api_key(key: str | None, where: str = "RUNWARE_API_KEY") -> None:
    if key is None:
        return
    if not isinstance(key, str):
        raise ConfigurationError(f"the API key must be a string, not {type(key).__name__}")
    if key != key.strip():
        raise ConfigurationError(f"the API key has leading or trailing whitespace; check {where}")
    for position, ch in enumerate(key, 1):
        code = ord(ch)
        if 0x20 <= code < 0x7F:
            continue
        kind = (
            "a control character"
            if code < 0x20 or 0x7F <= code < 0xA0
            else ("a non-ASCII character")
        )
        raise ConfigurationError(
            f"the API key holds {kind} at position {position}, which no HTTP header "
            f"can carry; check {where}"
        )


def split_url_credentials(url: str) -> tuple[str, str | None]:
    """``(url without user:password@, Proxy-Authorization value or None)``."""
    parts = urllib.parse.urlsplit(url)
    if "@" not in parts.netloc:
        return url, None
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    clean = urllib.parse.urlunsplit(parts._replace(netloc=hostport))
    if not user and not password:
        return clean, None
    pair = f"{urllib.parse.unquote(user)}:{urllib.parse.unquote(password)}".encode()
    return clean, "Basic " + base64.b64encode(pair).decode("ascii")


def strip_url_credentials(url: str) -> str:
    return split_url_credentials(url)[0]


def url_secrets(url: str) -> list[str]:
    """The password of ``url`` (as written and decoded), for redaction."""
    netloc = urllib.parse.urlsplit(url).netloc
    if "@" not in netloc:
        return []
    userinfo = netloc.rpartition("@")[0]
    password = userinfo.partition(":")[2]
    return [p for p in {password, urllib.parse.unquote(password)} if p]
