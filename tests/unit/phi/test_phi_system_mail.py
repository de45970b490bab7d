"""Subjects that mail systems write themselves are clean, unless they quote PHI.

A relay in front of a clinic's mail also carries what its mail servers and clients
generate: bounces and delivery reports (the exact wording of Postfix, sendmail, Exim,
Exchange and Gmail), automatic replies, read receipts and calendar answers. Refusing
or rewriting a bounce loses the one message that says another was lost, so these
wordings must pass; the same wrapper around a PHI subject must still be caught.
"""

from __future__ import annotations

import pytest

from relay.phi.detector import PhiDetector
from relay.phi.normalize import subject_texts

SYSTEM_SUBJECTS = [
    # Postfix bounce(8) templates
    "Undelivered Mail Returned to Sender",
    "Delayed Mail (still being retried)",
    "Successful Mail Delivery Report",
    "Mail Delivery Status Report",
    "Postmaster Copy: Undelivered Mail",
    # sendmail and Exim
    "Returned mail: see transcript for details",
    "Returned mail: User unknown",
    "Warning: could not send message for past 4 hours",
    "Mail delivery failed: returning message to sender",
    "Warning: message 1tQx7c-0004Zk-2P delayed 24 hours",
    # Exchange, Microsoft 365, Gmail
    "Undeliverable: Staff meeting moved to Thursday",
    "Delivery has failed to these recipients or groups",
    "Delivered: Q3 budget review",
    "Delivery Status Notification (Failure)",
    "Delivery Status Notification (Delay)",
    "Message not delivered",
    # clients' automatic answers
    "Automatic reply: Parking garage closure",
    "Out of Office: Monthly newsletter",
    "Read: Updated holiday schedule",
    "Not read: Updated holiday schedule",
    "Accepted: Team huddle",
    "Declined: Quality committee",
    "Tentative: Fire drill briefing",
]

WRAPPED_PHI = [
    "Undeliverable: Your HIV test results",
    "Automatic reply: biopsy results for Maria Gonzalez",
    "Undelivered Mail Returned to Sender: MRN 4482913 discharge summary",
    "Read: your chemotherapy schedule",
]


@pytest.fixture(scope="module")
def detector() -> PhiDetector:
    return PhiDetector()


@pytest.mark.parametrize("subject", SYSTEM_SUBJECTS)
def test_a_mail_system_subject_is_clean(detector: PhiDetector, subject: str) -> None:
    judgement = detector.judge(subject_texts(subject))
    assert not judgement.phi, (judgement.rules, round(judgement.score, 3))


@pytest.mark.parametrize("subject", WRAPPED_PHI)
def test_a_system_wrapper_around_phi_is_still_phi(detector: PhiDetector, subject: str) -> None:
    assert detector.judge(subject_texts(subject)).phi
