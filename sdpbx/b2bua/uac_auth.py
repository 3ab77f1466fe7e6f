"""Answering a 401/407 as a UAC: the retry of a request with Digest credentials.

A carrier challenges our REGISTERs and INVITEs; RFC 3261 §22.2 has the UAC
send the request again, as a *new* transaction (new branch, CSeq + 1), with
credentials for every realm that challenged it. This module builds that retry
and nothing else: no I/O, no clock, no state, so the B2BUA's outbound legs and
the trunk registration share one tested decision.

The one judgement it makes is when *not* to retry. Credentials for a realm
that are answered by another challenge were refused, whatever the new nonce
(§22.2): retrying would loop and, at many carriers, get our address blocked.
The exception is ``stale=true`` with a nonce we have not tried yet, which
says "your password was right, your nonce is old" and earns one retry. A
server that keeps answering ``stale`` with fresh nonces could still keep us
going, so callers bound their rounds as well.
"""

from __future__ import annotations

from ..sip import Headers, Request, Response, SipParseError, canonical_key, split_commas
from ..sip.auth import (
    DigestChallenge,
    DigestCredentials,
    UnsupportedAuthScheme,
    build_authorization,
    choose_challenge,
)

__all__ = ["add_credentials", "credential_header_for"]


def credential_header_for(status: int) -> tuple[str, str] | None:
    """(challenge header, credentials header) for a 401 or a 407, else ``None``."""
    if status == 401:
        return "WWW-Authenticate", "Authorization"
    if status == 407:
        return "Proxy-Authenticate", "Proxy-Authorization"
    return None


def _challenges_by_realm(values: list[str]) -> dict[str, list[DigestChallenge]]:
    """Every Digest challenge we can parse, grouped by realm in first-seen order.

    Other schemes (Basic, Bearer) and malformed values are skipped: a server
    that also offers something we cannot read is still answerable.
    """
    by_realm: dict[str, list[DigestChallenge]] = {}
    for value in values:
        try:
            challenge = DigestChallenge.parse(value)
        except (UnsupportedAuthScheme, SipParseError):
            continue
        by_realm.setdefault(challenge.realm, []).append(challenge)
    return by_realm


def _previous(values: list[str]) -> dict[str, DigestCredentials]:
    """The credentials the refused request carried, by realm."""
    out: dict[str, DigestCredentials] = {}
    for value in values:
        try:
            credentials = DigestCredentials.parse(value)
        except (UnsupportedAuthScheme, SipParseError):
            continue
        out.setdefault(credentials.realm, credentials)
    return out


def _pop_top_via(headers: Headers) -> Headers:
    first = headers.get("via")
    if first is None:
        return headers
    elements = split_commas(first)
    if len(elements) == 1:
        return headers.remove_first("via")
    return headers.replace_first("via", ", ".join(elements[1:]))


def _insert_before_length(headers: Headers, items: list[tuple[str, str]]) -> Headers:
    """Add header lines before Content-Length, where people expect to read them."""
    lines = list(headers)
    for i, (name, _) in enumerate(lines):
        if canonical_key(name) == "content-length":
            return Headers([*lines[:i], *items, *lines[i:]])
    return Headers([*lines, *items])


def add_credentials(
    request: Request,
    response: Response,
    *,
    username: str,
    password: str,
    nc: int = 1,
    cnonce: str | None = None,
) -> Request | None:
    """The retry of ``request`` answering the challenges in ``response``, or ``None``.

    The retry has CSeq + 1 and no top Via (the stack adds one with a fresh
    branch), and one ``Authorization`` (401) or ``Proxy-Authorization`` (407)
    line per challenged realm, built for that realm's strongest challenge
    (SHA-256 before MD5). Credentials the request carried for realms that did
    not challenge this time are kept: a request through two authenticating
    proxies needs both. ``None`` when the response is not a 401/407, offers no
    challenge we can answer, or refuses credentials we already sent (see the
    module docstring). ``cnonce`` fixes the client nonce, for tests.
    """
    names = credential_header_for(response.status)
    if names is None:
        return None
    challenge_name, credentials_name = names
    by_realm = _challenges_by_realm(response.headers.get_all(challenge_name))
    if not by_realm:
        return None
    previous = _previous(request.headers.get_all(credentials_name))
    uri = str(request.uri)
    answers: dict[str, str] = {}
    for realm, challenges in by_realm.items():
        try:
            challenge = choose_challenge(challenges)
        except UnsupportedAuthScheme:
            return None
        before = previous.get(realm)
        if before is not None and not (challenge.stale and challenge.nonce != before.nonce):
            return None
        credentials = build_authorization(
            challenge,
            username=username,
            password=password,
            method=request.method,
            uri=uri,
            cnonce=cnonce,
            nc=nc,
            body=request.body,
        )
        answers[realm] = credentials.to_header_value()

    kept: list[tuple[str, str]] = []
    key = canonical_key(credentials_name)
    for name, value in request.headers:
        if canonical_key(name) != key:
            kept.append((name, value))
            continue
        try:
            old_realm: str | None = DigestCredentials.parse(value).realm
        except (UnsupportedAuthScheme, SipParseError):
            old_realm = None
        if old_realm not in answers:
            kept.append((name, value))
    cseq = request.cseq
    headers = _pop_top_via(Headers(kept)).set("CSeq", f"{cseq.number + 1} {cseq.method}")
    headers = _insert_before_length(headers, [(credentials_name, v) for v in answers.values()])
    return request.replace(headers=headers)
