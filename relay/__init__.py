"""phi-relay: an SMTP relay that enforces HIPAA email policy in transit."""

__version__ = "0.1.0"
