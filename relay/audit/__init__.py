"""The tamper-evident audit log: hash-chained JSON records and their verifier."""

from relay.audit.hashing import recipient_hash
from relay.audit.log import AuditError, AuditLog

__all__ = ["AuditError", "AuditLog", "recipient_hash"]
