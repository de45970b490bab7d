"""The tamper-evident audit log: hash-chained JSON records and their verifier."""

from relay.audit.hashing import recipient_hash
from relay.audit.log import AuditError, AuditLog
from relay.audit.verify import Problem, VerifyReport, verify

__all__ = [
    "AuditError",
    "AuditLog",
    "Problem",
    "VerifyReport",
    "recipient_hash",
    "verify",
]
