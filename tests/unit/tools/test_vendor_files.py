"""Reading the MTAs' files: lines and their numbers, over-long lines, and the ``--follow``
readers (a growing log across rotation and truncation, a mailbox receiving messages)."""

from __future__ import annotations

import gzip
import mailbox
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.tools import vendor_files
from streams.tools.vendor_files import (
    InputError,
    LineFollower,
    MailboxPoller,
    delivery_order,
    units,
)

DSN = Path(__file__).parents[2] / "fixtures" / "vendors" / "dsn"


def texts(follower: LineFollower) -> list[str | None]:
    return [u.text for u in follower.new_units()]


def test_lines_keep_their_physical_numbers_and_blank_lines_are_left_out(tmp_path):
    log = tmp_path / "acct.csv"
    log.write_bytes(b"a\r\n\n  \nb\nc")  # CRLF, blank lines, no newline at the end
    assert [(u.number, u.label, u.text) for u in units("pmta", str(log))] == [
        (1, "line 1", "a"),
        (4, "line 4", "b"),
        (5, "line 5", "c"),
    ]


def test_a_line_over_the_limit_is_reported_and_its_rest_skipped(tmp_path, monkeypatch):
    monkeypatch.setattr(vendor_files, "MAX_LINE", 10)
    log = tmp_path / "mail.log"
    log.write_bytes(b"short\n" + b"x" * 35 + b"\nafter\n")
    assert [(u.number, u.text) for u in units("postfix", str(log))] == [
        (1, "short"),
        (2, None),
        (3, "after"),
    ]


def test_follow_holds_a_partial_line_until_its_newline(tmp_path):
    log = tmp_path / "mail.log"
    log.write_bytes(b"one\ntw")
    follower = LineFollower(str(log))
    assert texts(follower) == ["one"]
    assert texts(follower) == []
    with log.open("ab") as fh:
        fh.write(b"o\nthree\n")
    assert texts(follower) == ["two", "three"]


def test_follow_reads_the_old_file_to_its_end_then_the_new_one_from_its_start(tmp_path):
    log = tmp_path / "mail.log"
    log.write_bytes(b"1\n2\n")
    follower = LineFollower(str(log))
    assert texts(follower) == ["1", "2"]
    with log.open("ab") as fh:
        fh.write(b"3\n4")  # written before the rotation, its last line never completed
    os.rename(log, tmp_path / "mail.log.1")
    assert texts(follower) == ["3"]  # the path is gone: keep reading the old file
    log.write_bytes(b"5\n6\n")
    assert texts(follower) == ["4", "5", "6"]
    assert follower.rotations == 1
    with log.open("ab") as fh:
        fh.write(b"7\n")
    assert [(u.number, u.text) for u in follower.new_units()] == [(3, "7")]
    follower.close()


def test_follow_starts_again_when_the_file_is_truncated_in_place(tmp_path):
    log = tmp_path / "mail.log"
    log.write_bytes(b"first line of the old content\n")
    follower = LineFollower(str(log))
    assert texts(follower) == ["first line of the old content"]
    log.write_bytes(b"new\n")  # copytruncate: same file, shorter
    assert texts(follower) == ["new"]
    follower.close()


def test_follow_refuses_a_missing_or_compressed_file(tmp_path):
    with pytest.raises(InputError, match="cannot read"):
        LineFollower(str(tmp_path / "absent.log"))
    (tmp_path / "old.log.gz").write_bytes(gzip.compress(b"x\n"))
    with pytest.raises(InputError, match="compressed"):
        LineFollower(str(tmp_path / "old.log.gz"))


def test_mailbox_poller_gives_each_new_maildir_message_once(tmp_path):
    box = mailbox.Maildir(tmp_path / "Maildir", create=True)
    box.add((DSN / "postfix-bounce.eml").read_bytes())
    poller = MailboxPoller(str(tmp_path / "Maildir"))
    assert [u.number for u in poller.new_units()] == [1]
    assert list(poller.new_units()) == []
    box.add((DSN / "arf-abuse.eml").read_bytes())
    [unit] = poller.new_units()
    assert unit.number == 2 and "feedback-report" in (unit.text or "")


def test_mailbox_poller_reads_an_mbox_once_it_holds_still(tmp_path):
    path = tmp_path / "bounces"
    box = mailbox.mbox(path, create=True)
    box.add((DSN / "postfix-bounce.eml").read_bytes())
    box.flush()
    poller = MailboxPoller(str(path))
    assert list(poller.new_units()) == []  # first sight: wait until the size holds
    assert [u.number for u in poller.new_units()] == [1]
    box.add((DSN / "arf-abuse.eml").read_bytes())
    box.flush()
    assert list(poller.new_units()) == []
    assert [u.number for u in poller.new_units()] == [2]
    box.close()
    path.write_bytes(b"")  # emptied by another reader
    list(poller.new_units())
    assert list(poller.new_units()) == []


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2), st.integers(0, 999_999)), min_size=2, max_size=30))
def test_maildir_names_sort_in_delivery_order_whatever_their_digit_counts(deliveries):
    """Python's Maildir names are ``<s>.M<usec>P<pid>Q<n>.<host>``, not zero-padded:
    ``M99`` comes before ``M100`` though it sorts after it as text."""
    names = [f"{1_700_000_000 + s}.M{usec}P42Q{n}.host" for n, (s, usec) in enumerate(deliveries)]
    order = sorted(range(len(names)), key=lambda n: (*deliveries[n], n))
    want = [names[n] for n in order]
    assert sorted(names, key=delivery_order) == want
