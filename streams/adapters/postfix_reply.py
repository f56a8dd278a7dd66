"""The parts of a Postfix log message about one queued message: queue IDs, the lines that
join a message together, and the delivery line with the reply it carries.

A delivery line (``log_adhoc.c``): ``QUEUEID: to=<r>[, orig_to=<o>], relay=R[, conn_use=N],
delay=D, delays=a/b/c/d[, tls=...], dsn=X.Y.Z, status=S (reason)``. The reason holds the
remote reply when a server gave one (``host mx.example.com[192.0.2.1] said: 452 4.2.2 Mailbox
full (in reply to RCPT TO command)``), else Postfix's own description of what went wrong
(``connect to mx.example.com[192.0.2.1]:25: Connection timed out``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from streams.adapters.base import CONNECTION

# Short IDs are hexadecimal; long IDs (enable_long_queue_ids) are the time in a 52-character
# alphabet without vowels, 'z', then the inode number in its first 51 characters.
QUEUE_ID = (
    r"(?:[0-9A-F]{6,}"
    r"|[0-9B-DF-HJ-NP-TV-Zb-df-hj-np-tv-z]{10,}z[0-9B-DF-HJ-NP-TV-Zb-df-hj-np-tv-y]+)"
)
QUEUE_LINE = re.compile(rf"(?P<qid>{QUEUE_ID}): (?P<rest>.*)")
DELIVERY = re.compile(
    r"to=<(?P<to>.*?)>, (?:orig_to=<.*?>, )?relay=(?P<relay>\S+?), .*?"
    r"dsn=(?P<dsn>\S+?), status=(?P<status>\S+) \((?P<reason>.*)\)"
)
QUEUED = re.compile(r"from=<(?P<sender>.*?)>, size=\d+, nrcpt=\d+.*")
EXPIRED = re.compile(r"from=<(?P<sender>.*?)>, status=(?:force-)?expired, returned to sender")
MESSAGE_ID = re.compile(r"message-id=(?P<id>.*)")
NOTIFICATION = re.compile(rf"(?:sender|postmaster) [\w ]*notification: (?P<qid>{QUEUE_ID})")
# "removed" (qmgr, postsuper) or "removed (reason)" (cleanup): the queue file is gone.
REMOVED = re.compile(r"removed(?: \(.*\))?")
# A held message: Postfix did not try this recipient, it reuses an earlier failure.
SUSPENDED = "delivery temporarily suspended: "

_SAID = re.compile(
    r"host (?P<host>[^\s\[]+)\[[^\]]*\] said: (?P<reply>.*?)(?: \(in reply to [^()]*\))?$"
)
_PEER = re.compile(r"(?:connect to|lost connection with|conversation with) (?P<host>[^\s\[]+)\[")
_CONNECTION = re.compile(
    r"^(?:connect to |lost connection with |conversation with \S+ timed out|Host or domain"
    r" name not found|Name service error)|Connection (?:timed out|refused|reset)|Network is"
    r" unreachable|No route to host|server dropped connection"
)
_DNS = re.compile(r"^(?:Host or domain name not found|Name service error)")
_REPLY = re.compile(r"(?P<code>[245]\d\d)(?:[ -]+(?P<status>[245]\.\d{1,3}\.\d{1,3})(?![\d.]))?")
_STATUS = re.compile(r"[245]\.\d{1,3}\.\d{1,3}")


@dataclass(frozen=True, slots=True)
class Reply:
    smtp_code: int | None
    enhanced_status: str | None
    diagnostic: str | None
    mx_host: str | None
    origin: str | None  # None: the remote server's verdict

    def fields(self) -> dict[str, object]:
        return {
            "smtp_code": self.smtp_code,
            "enhanced_status": self.enhanced_status,
            "diagnostic": self.diagnostic,
            "mx_host": self.mx_host,
            "origin": self.origin,
        }


def relay_host(relay: str) -> str | None:
    """``relay=mx.example.com[192.0.2.1]:25`` → the host; ``none``, ``local`` → None."""
    return (relay.split("[", 1)[0] or None) if "[" in relay else None


def parse_reason(reason: str, dsn: str, final: bool) -> Reply:
    """The reply a delivery line's reason holds. ``dsn`` gives the enhanced status when the
    reply has none. With no remote reply, a connection failure (time-out, refused, lost
    connection, a DNS lookup that may succeed later) is an outage: origin ``connection``;
    a final (bounced) DNS answer is the domain's own verdict."""
    text = reason.removeprefix(SUSPENDED)
    dsn_status = dsn if _STATUS.fullmatch(dsn) else None
    if said := _SAID.search(text):
        reply = said["reply"]
        code = status = None
        if m := _REPLY.match(reply):
            code, status = int(m["code"]), m["status"]
        return Reply(code, status or dsn_status, reply or None, said["host"], None)
    peer = _PEER.search(text)
    connection = bool(_CONNECTION.search(text)) and not (final and _DNS.search(text))
    return Reply(
        None,
        dsn_status,
        text or None,
        peer["host"] if peer else None,
        CONNECTION if connection else None,
    )
