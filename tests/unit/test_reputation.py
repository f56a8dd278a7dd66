import factories
import pytest
from factories import UNALIGNED_2023

from streams.domain.control.mx_rules import load_mx_rules
from streams.domain.control.reputation import (
    BUCKET_MS,
    KeyWindow,
    Rates,
    ReputationBook,
    Signal,
    signal_from_event,
)
from streams.domain.types import Qualification

RULES = load_mx_rules()
BUCKET_START = UNALIGNED_2023 - UNALIGNED_2023 % BUCKET_MS  # a 5-minute reputation bucket

RATE_LIMIT = Qualification("soft", "Refused", 20, "gmail-42128", rate_limit=True)
USER_UNKNOWN = Qualification("hard", "User unknown", 10, "user-unknown")
SPAM_BLOCK = Qualification("soft", "Refused", 51, "spam-block")
MAILBOX_FULL = Qualification("soft", "Mailbox full", 22, "mailbox-full")
IGNORED = Qualification("ignored", "Unreachable", 70, "transient-ignored")
UNDEFINED = Qualification("undefined", "Undefined", 1, "no-rule")


def event(kind, **extra):
    fields = {"event_id": "e1", "delivery_id": "d1", "recipient": "Someone@Gmail.com", **extra}
    return factories.event("m1", kind, start=BUCKET_START, **fields)


@pytest.mark.parametrize(
    ("family", "kind", "q", "outcome", "attempt"),
    [
        ("send", "delivered", None, "delivered", True),
        ("send", "relayed", None, None, None),
        ("bounce", "sync", RATE_LIMIT, "rate_limit", True),
        ("retry", "deferred", RATE_LIMIT, "rate_limit", True),
        ("bounce", "sync", USER_UNKNOWN, "hard", True),
        ("bounce", "async", USER_UNKNOWN, "hard", False),
        ("bounce", "sync", Qualification("soft", "User unknown", 10, "r"), "hard", True),
        ("bounce", "sync", SPAM_BLOCK, "block", True),
        ("bounce", "sync", Qualification("hard", "Refused", 54, "relay"), "block", True),
        ("bounce", "complaint", None, "complaint", False),
        ("retry", "deferred", MAILBOX_FULL, "soft", True),
        ("bounce", "sync", IGNORED, None, None),
        ("bounce", "sync", UNDEFINED, "attempt", True),
        ("bounce", "async", UNDEFINED, None, None),
        ("retry", "expired", MAILBOX_FULL, None, None),
        ("bounce", "sync", None, None, None),
    ],
)
def test_signal_from_event(family, kind, q, outcome, attempt):
    extra = {"smtp_code": 421, "enhanced_status": "4.7.28", "diagnostic": "Our system has detected"}
    sig = signal_from_event(family, event(kind, sending_ip="192.0.2.1", **extra), q, RULES)
    if outcome is None:
        assert sig is None
        return
    assert (sig.outcome, sig.attempt) == (outcome, attempt)
    assert (sig.domain, sig.group, sig.sending_ip) == ("gmail.com", "google", "192.0.2.1")
    assert sig.qualification is q
    if family != "send":
        assert sig.reply == "421 4.7.28 Our system has detected"


def test_reply_text_does_not_repeat_code():
    ev = event("sync", smtp_code=550, enhanced_status="5.1.1", diagnostic="550 5.1.1 No such user")
    sig = signal_from_event("bounce", ev, USER_UNKNOWN, RULES)
    assert sig.reply == "550 5.1.1 No such user"


def test_group_by_mx_host():
    ev = event("sync", recipient="a@corp.example", mx_host="corp.mail.protection.outlook.com")
    assert signal_from_event("bounce", ev, MAILBOX_FULL, RULES).group == "microsoft"


def sig(t, outcome="delivered", domain="gmail.com", group="google", ip="192.0.2.1", attempt=None):
    if attempt is None:
        attempt = outcome not in ("complaint",)
    return Signal(t, f"e{t}", domain, group, ip, outcome, attempt)


def test_keys_and_first_records():
    book = ReputationBook()
    records = book.add(sig(BUCKET_START))
    assert {r.key for r in records} == {
        "domain:gmail.com",
        "group:google",
        "ip_group:192.0.2.1|google",
    }
    assert {r.scope for r in records} == {"domain", "group", "ip_group"}
    assert book.size() == 3


def test_records_on_bucket_advance_and_material_change_only():
    book = ReputationBook()
    book.add(sig(BUCKET_START, ip=None))
    for i in range(1, 100):
        assert book.add(sig(BUCKET_START + i, ip=None)) == []  # delivered only: rates stay put
    # 1 hard in 101 attempts moves no rate by a full point (and the score by < 5) ...
    assert book.add(sig(BUCKET_START + 200, "hard", ip=None)) == []
    # ... 2 in 102 do.
    moved = book.add(sig(BUCKET_START + 201, "hard", ip=None))
    assert {r.key for r in moved} == {"domain:gmail.com", "group:google"}
    assert moved[0].hard == 2 and moved[0].attempts == 102
    assert book.add(sig(BUCKET_START + BUCKET_MS, ip=None)) != []  # new bucket


def test_window_drops_old_buckets_and_ignores_too_old_signals():
    book = ReputationBook()
    for i in range(10):
        book.add(sig(BUCKET_START + i, "hard", ip=None))
    snap = book.snapshot("group:google")
    assert snap.hard == 10 and snap.rates.invalid == 1.0
    book.add(sig(BUCKET_START + 3600_000, ip=None))  # one hour later: the first bucket left
    snap = book.snapshot("group:google")
    assert (snap.hard, snap.attempts, snap.delivered) == (0, 1, 1)
    assert book.add(sig(BUCKET_START, "hard", ip=None)) == []  # older than the window
    assert book.snapshot("group:google").hard == 0


def test_rates_and_score():
    counts = {
        "attempts": 1000,
        "delivered": 800,
        "hard": 100,
        "soft": 0,
        "blocks": 0,
        "rate_limited": 0,
        "complaints": 0,
    }
    rates = Rates.of(counts)
    assert rates.invalid == pytest.approx(0.1)
    assert rates.score() == pytest.approx(50)
    assert Rates.of({**counts, "hard": 0, "complaints": 4}).score() == pytest.approx(50)
    assert Rates.of({**counts, "hard": 0, "blocks": 200}).score() == pytest.approx(50)
    assert Rates.of({**counts, "hard": 0}).score() == 100
    assert Rates.of({k: 0 for k in counts}).score() == 100


def test_complaints_count_against_deliveries():
    book = ReputationBook()
    for i in range(1000):
        book.add(sig(BUCKET_START + i, ip=None))
    records = book.add(sig(BUCKET_START + 2000, "complaint", ip=None))
    assert records and records[0].complaints == 1 and records[0].attempts == 1000
    assert records[0].rates.complaint == pytest.approx(0.001)


def test_idle_keys_are_evicted():
    book = ReputationBook(evict_after_ms=3600_000)
    book.add(sig(BUCKET_START, domain="a.example", group="default"))
    book.add(sig(BUCKET_START, domain="b.example", group="default"))
    assert book.size() == 4  # 2 domains, the default group, 1 ip x group
    book.add(sig(BUCKET_START + 2 * 3600_000, domain="b.example", group="default", ip=None))
    assert book.window("domain:a.example") is None
    assert book.window("ip_group:192.0.2.1|default") is None
    assert book.size() == 2


def test_key_window_round_trip():
    book = ReputationBook()
    for i, outcome in enumerate(["delivered", "hard", "block", "rate_limit", "complaint"]):
        book.add(sig(BUCKET_START + i * BUCKET_MS, outcome))
    window = book.window("group:google")
    copy = KeyWindow.from_dict(window.to_dict())
    assert copy.to_dict() == window.to_dict()
    other = ReputationBook()
    other.restore(copy)
    assert other.snapshot("group:google") == book.snapshot("group:google")
