"""Agreement with sisimai's labels on the corpus in ``sisimai-replies.tsv``.

Hard/soft: our ``hard`` against sisimai ``hard == 1`` (soft and ignored count as not
hard), over all rows. Reason: over rows whose sisimai reason maps unambiguously to a
Campaign reason (SISIMAI_TO_CAMPAIGN value not None).

Known gap: sisimai labels 28 replies that say "user unknown" / "no such user" as
``filtered`` (hard = 0) because it decides from the SMTP stage (rejected after DATA),
which the text does not show; the same wordings appear as ``userunknown`` (hard = 1)
elsewhere in the corpus. No wording rule can agree with both, so the all-rows hard/soft
figure cannot reach 97 % without fitting rules to rows. The test measures that ceiling
(the 5xx replies worded "user unknown" and alike, with both labels: a text-only
qualifier loses the smaller side at best), asserts the 97 % target on the rows sisimai
labels from wording (all but ``filtered``) and keeps the all-rows figure within two
points of the ceiling, and prints all three.
"""

from __future__ import annotations

import csv
import os
import re
from pathlib import Path

import pytest

from streams.domain.bounce.qualifier import Qualifier

REPO = Path(__file__).resolve().parents[2]
CORPUS = (
    Path(os.environ.get("MTA_CORPORA_DIR", REPO.parent / "shared" / "corpora"))
    / "sisimai-replies.tsv"
)

# sisimai reason -> Campaign failure_reason; None = no unambiguous mapping.
SISIMAI_TO_CAMPAIGN: dict[str, str | None] = {
    "userunknown": "User unknown",
    "hasmoved": "User unknown",  # mailbox moved, no forwarding: address gone (x.1.6)
    "hostunknown": "Invalid domain",
    "notaccept": "Invalid domain",  # domain accepts no mail (null MX, 521/556)
    "mailboxfull": "Mailbox full",
    "suspend": "Account disabled",
    "authfailure": "Refused",
    "badreputation": "Refused",
    "blocked": "Refused",
    "contenterror": "Refused",
    "exceedlimit": "Refused",
    "mesgtoobig": "Refused",
    "norelaying": "Refused",
    "notcompliantrfc": "Refused",
    "policyviolation": "Refused",
    "rejected": "Refused",
    "requireptr": "Refused",
    "securityerror": "Refused",
    "spamdetected": "Refused",
    "speeding": "Refused",
    "toomanyconn": "Refused",
    "virusdetected": "Refused",
    "mailererror": "Unreachable",
    "networkerror": "Unreachable",
    "syntaxerror": "Unreachable",
    "systemerror": "Unreachable",
    "systemfull": "Unreachable",
    # Decided by the SMTP stage, not the wording (mostly "user unknown" texts).
    "filtered": None,
    # The cause varies with the reply that preceded the expiry.
    "expired": None,
    "onhold": None,
    "undefined": None,
    "delivered": None,
    "feedback": None,
    "vacation": None,
}

HARD_TARGET = 0.97
HARD_BELOW_CEILING = 0.02
REASON_TARGET = 0.90
USER_UNKNOWN_WORDING = re.compile(
    r"user unknown|unknown user|no such user|does not exist|unknown recipient", re.I
)


def text_only_ceiling(rows: list[dict[str, str]]) -> float:
    """Best all-rows hard/soft agreement any qualifier reading only the reply can reach."""
    worded = [r for r in rows if r["reply_code"].startswith("5")]
    worded = [r for r in worded if USER_UNKNOWN_WORDING.search(r["text"])]
    hard = sum(1 for r in worded if r["hard"] == "1")
    return (len(rows) - min(hard, len(worded) - hard)) / len(rows)


def load_rows() -> list[dict[str, str]]:
    if not CORPUS.is_file():
        pytest.skip(f"corpus not found at {CORPUS} (set MTA_CORPORA_DIR)")
    with CORPUS.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))


def test_corpus_agreement(capsys):
    rows = load_rows()
    q = Qualifier(cache_size=0)
    hard_ok = hard_ok_wording = wording_rows = reason_ok = reason_rows = 0
    for row in rows:
        assert row["reason"] in SISIMAI_TO_CAMPAIGN, row["reason"]
        code = int(row["reply_code"]) if row["reply_code"] else None
        result = q.qualify(code, row["enhanced_status"] or None, row["text"])
        agree = (result.failure_type == "hard") == (row["hard"] == "1")
        hard_ok += agree
        if row["reason"] != "filtered":
            wording_rows += 1
            hard_ok_wording += agree
        expected = SISIMAI_TO_CAMPAIGN[row["reason"]]
        if expected is not None:
            reason_rows += 1
            reason_ok += result.failure_reason == expected
        # qualify_text must read the same codes as the corpus columns.
        assert q.qualify_text(row["text"]).failure_type in ("hard", "soft", "ignored", "undefined")
    hard_all = hard_ok / len(rows)
    hard_wording = hard_ok_wording / wording_rows
    reason = reason_ok / reason_rows
    ceiling = text_only_ceiling(rows)
    with capsys.disabled():
        print(
            f"\nsisimai corpus: hard/soft {hard_all:.1%} ({hard_ok}/{len(rows)} rows, "
            f"text-only ceiling {ceiling:.1%}), "
            f"without 'filtered' {hard_wording:.1%} ({hard_ok_wording}/{wording_rows}); "
            f"reason {reason:.1%} ({reason_ok}/{reason_rows} rows)"
        )
    assert hard_wording >= HARD_TARGET
    assert hard_all >= ceiling - HARD_BELOW_CEILING
    assert reason >= REASON_TARGET
