"""Secrets kept out of what is printed: URLs with their passwords and secret parameters
masked."""

from __future__ import annotations

import re

MASK = "****"

# A comma that starts another URL (lists of registry URLs), and a URL's scheme.
_NEXT_URL = re.compile(r",(?=\s*[A-Za-z][A-Za-z0-9+.-]*://)")
_SCHEME = re.compile(r"\s*[A-Za-z][A-Za-z0-9+.-]*://")
_SECRET_PARAM = re.compile(r"pass|pwd|secret|token|key|auth|credential|signature", re.IGNORECASE)


def mask_secrets(text: str) -> str:
    """``text`` with the secrets of the URLs in it masked (a comma-separated list too).

    In each URL: the password of the user info (``user:****@``; a user info with no ``:``
    is masked whole, as some services take a token there) and the values of query
    parameters whose name looks secret (password, secret, token, key, auth...). The user
    info ends at the URL's last ``@``, so a password with an unencoded ``@``, ``/``, ``?``
    or ``#`` is masked whole as well.
    """
    return ",".join(_mask_url(part)[0] for part in _NEXT_URL.split(text))


def url_secrets(text: str) -> list[str]:
    """The secrets ``mask_secrets`` masks in ``text``, longest first: for free text that
    may quote the value (a parser's error message)."""
    found = {secret for part in _NEXT_URL.split(text) for secret in _mask_url(part)[1]}
    return sorted(found, key=len, reverse=True)


def _mask_url(text: str) -> tuple[str, list[str]]:
    """The URL masked, and the secrets taken out."""
    scheme = _SCHEME.match(text)
    if scheme is None:
        return text, []
    secrets = []
    userinfo, at, rest = text[scheme.end() :].rpartition("@")
    if at and userinfo:
        user, colon, password = userinfo.partition(":")
        secret = password if colon else userinfo
        if secret:
            secrets.append(secret)
            userinfo = f"{user}:{MASK}" if colon else MASK
    base, hash_, fragment = rest.partition("#")
    path, question, query = base.partition("?")
    if question:
        params = []
        for param in query.split("&"):
            name, equals, value = param.partition("=")
            if equals and value and _SECRET_PARAM.search(name):
                secrets.append(value)
                param = f"{name}={MASK}"
            params.append(param)
        query = "&".join(params)
    return f"{scheme.group()}{userinfo}{at}{path}{question}{query}{hash_}{fragment}", secrets
