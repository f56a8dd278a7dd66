"""Who decided a failure: only a receiving server's reply (origin null or ``remote``) counts
against an address or a domain's reputation; the MTA's own doing (``local``) and a
connection with no reply (``connection``) give a message status only."""

import pytest
from factories import JAN_2026
from factories import event as ev
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.domain.bounce.qualifier import default_qualifier
from streams.domain.control.mx_rules import MxRulesError, load_mx_rules
from streams.pipeline.feedback import FeedbackProcessor
from streams.pipeline.records import Source, signal_output
from streams.runtime.codec import DecodeError
from streams.runtime.config import ConfigError, Settings
from streams.runtime.validate import validate_event
from streams.tools.replay import Replayer

H = 3_600_000
RULES = load_mx_rules(None)
TSS04 = dict(
    smtp_code=421,
    enhanced_status="4.7.0",
    diagnostic="421 4.7.0 [TSS04] Messages from 192.0.2.1 temporarily deferred",
)
SUSPENDED_HOLD = dict(
    smtp_code=451, enhanced_status="4.4.4", diagnostic="451 4.4.4 KumoMTA internal: suspended"
)


def feedback() -> FeedbackProcessor:
    return FeedbackProcessor({}, {}, {}, default_qualifier(), signal_fn=signal_output(RULES))


def outputs_of(fp: FeedbackProcessor, family: str, event: dict, offset: int) -> dict:
    out = fp.process(family, event, 0, offset, Source(f"{family}:0", offset))
    return {o.topic: o.value for o in out}


def yahoo(mid: str, kind: str, t: int, **extra) -> dict:
    return ev(mid, kind, t, recipient=f"{mid.lower()}@yahoo.com", **extra)


@pytest.mark.parametrize("origin", ["local", "connection"])
def test_a_deferral_that_is_no_remote_verdict_makes_no_signal_and_no_address_error(origin):
    fp = feedback()
    outputs_of(fp, "send", yahoo("M1", "relayed", 0), 0)
    out = outputs_of(fp, "retry", yahoo("M1", "deferred", H, origin=origin, **TSS04), 1)
    assert "signal" not in out
    full = dict(smtp_code=452, diagnostic="452 4.2.2 Mailbox full")
    outputs_of(fp, "retry", yahoo("M1", "deferred", 2 * H, origin=origin, **full), 2)
    assert fp.addresses["m1@yahoo.com"].view["error_count"] == 0
    # The same reply from the server itself is a rate-limit signal.
    remote = outputs_of(fp, "retry", yahoo("M2", "deferred", H, origin="remote", **TSS04), 2)
    assert remote["signal"]["outcome"] == "rate_limit"


def test_a_hold_by_our_own_suspension_leaves_the_message_pending_without_error():
    fp = feedback()
    outputs_of(fp, "send", yahoo("M1", "relayed", 0), 0)
    out = outputs_of(fp, "retry", yahoo("M1", "deferred", H, origin="local", **SUSPENDED_HOLD), 1)
    assert "status" not in out  # nothing visible changed
    view = fp.messages["M1"].view
    assert view.status == "taken_into_account" and view.failure_reason is None


def test_a_local_bounce_fails_the_message_for_good_but_not_the_address():
    fp = feedback()
    outputs_of(fp, "send", ev("M1", "relayed", 0), 0)
    text = dict(diagnostic="550 5.7.1 AdminBounce: operator purged the queue")
    out = outputs_of(fp, "bounce", ev("M1", "sync", H, origin="local", **text), 1)
    assert out["status"]["status"] == "failed" and out["status"]["failure_type"] == "hard"
    assert "signal" not in out
    assert fp.addresses["m1@example.org"].view["state"] == "valid"
    # With no text a rule knows, the reason is Refused; a later delivery changes nothing.
    outputs_of(fp, "bounce", ev("M2", "sync", 0, origin="local"), 2)
    assert fp.messages["M2"].view.failure_reason == "Refused"
    outputs_of(fp, "send", ev("M2", "delivered", H), 3)
    assert fp.messages["M2"].view.status == "failed"


_FAMILIES = st.sampled_from(
    [
        ("retry", "deferred", TSS04),
        ("retry", "deferred", dict(smtp_code=452, diagnostic="452 4.2.2 Mailbox full")),
        ("bounce", "sync", dict(smtp_code=550, diagnostic="550 5.1.1 No such user")),
        ("bounce", "async", dict(smtp_code=552, diagnostic="552 5.2.2 Mailbox full")),
        ("retry", "expired", {}),
    ]
)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(_FAMILIES, st.integers(0, 6 * 24), st.none() | st.integers(0, 6 * 24)),
        max_size=25,
    ),
    st.sampled_from(["local", "connection"]),
)
def test_events_that_are_no_remote_verdict_never_change_an_address_or_reputation(history, origin):
    """Replaying a history with and without extra non-remote events gives the same
    address health and the same throttle settings."""
    plain, mixed = Replayer(), Replayer()
    for n, ((family, kind, reply), hours, extra_hours) in enumerate(history):
        event = {"family": family, **yahoo(f"M{n}", kind, hours * H, **reply)}
        for replayer in (plain, mixed):
            replayer.apply(*replayer.normalise(event))
        if extra_hours is not None:
            # Another recipient of the same domain, and this recipient at another time.
            for i, who in enumerate((f"X{n}", f"M{n}")):
                other = yahoo(who, kind, extra_hours * H, origin=origin, **reply)
                other["event_id"] = f"x{n}-{i}"
                mixed.apply(*mixed.normalise({"family": family, **other}))
    # The clock moves with any event; bring both to the same time before comparing.
    end = max(plain.feedback.clock, mixed.feedback.clock)
    plain.advance(end)
    mixed.advance(end)

    def state(replayer):
        lines = replayer.final_state()
        # Addresses seen only through non-remote events stay valid with no error.
        return [
            line
            for line in lines
            if line["type"] == "throttle"
            or (line["type"] == "address" and (line["state"], line["error_count"]) != ("valid", 0))
        ]

    assert state(mixed) == state(plain)


def test_an_origin_the_pipeline_does_not_know_is_refused():
    event = ev("M1", "sync", 0, origin="elsewhere")
    with pytest.raises(DecodeError, match="origin 'elsewhere' is not one of"):
        validate_event("bounce", event, now_ms=JAN_2026)
    validate_event("bounce", ev("M1", "sync", 0, origin="connection"), now_ms=JAN_2026)


def test_the_operator_kumomta_shaping_file_adds_its_automation_rules(tmp_path):
    shaping = tmp_path / "shaping.toml"
    shaping.write_text(
        '["yahoo.com"]\nmx_rollup = true\n[["yahoo.com".automation]]\n'
        'regex = \'\\[TSS04\\]\'\naction = "Suspend"\nduration = "2 hours"\n'
    )
    settings = Settings.from_env({"MTA_KUMO_SHAPING_FILE": str(shaping)})
    added = settings.mx_rules().automation[len(RULES.automation) :]
    assert [(r.groups, r.duration_s, r.scope) for r in added] == [
        (frozenset({"yahoo"}), 7200, "ip_group")
    ]
    shaping.write_text('["yahoo.com"]\nautomation = "not a list"\n')
    with pytest.raises(MxRulesError, match="automation must be an array"):
        settings.mx_rules()
    with pytest.raises(ConfigError, match="MTA_KUMO_SHAPING_FILE"):
        Settings.from_env({"MTA_KUMO_SHAPING_FILE": str(tmp_path / "missing.toml")})


def test_every_producer_keys_an_input_by_its_lower_cased_recipient():
    """The pipeline keys an address's state lower-cased; a key that kept the case could put
    one address in two partitions, with two states."""
    from streams.adapters.base import Event
    from streams.pipeline.topics import input_key
    from streams.runtime.codec import Codec
    from streams.runtime.vendor_records import to_record
    from streams.tools.replay import partition_of

    mixed = ev("M1", "relayed", 0, recipient="Q.User@Example.ORG")
    record = to_record(Codec(), Event("send", mixed), "test", 0)
    assert record is not None and record.key == input_key("q.user@example.org")
    assert partition_of(record.key, 8) == partition_of("q.user@example.org", 8)
