"""A minimal Django project that sends one message with the SMTP backend, as an app would.

Run as a program: settings come from the environment (RELAY_* below), the result is one
JSON line on stdout: {"sent": N} or {"error": type, "code": SMTP code, "text": reply}.
docs/apps.md shows the settings and the backend class below; a test checks they agree.
"""

from __future__ import annotations

import json
import os
import smtplib
import ssl
import sys

import django
from django.conf import settings
from django.core.mail import EmailMessage
from django.core.mail.backends.smtp import EmailBackend
from django.utils.functional import cached_property


# --- recipe: trust the relay's CA from settings (docs/apps.md) ---
class RelayEmailBackend(EmailBackend):
    """Django's SMTP backend, verifying the relay against PHI_RELAY_CA_FILE."""

    @cached_property
    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=settings.PHI_RELAY_CA_FILE)


# --- end recipe ---


def main() -> int:
    backend = os.environ.get("RELAY_BACKEND", "django.core.mail.backends.smtp.EmailBackend")
    settings.configure(
        EMAIL_BACKEND=backend,
        EMAIL_HOST=os.environ["RELAY_HOST"],
        EMAIL_PORT=int(os.environ["RELAY_PORT"]),
        EMAIL_USE_TLS=True,  # STARTTLS; the relay refuses mail before it
        EMAIL_HOST_USER=os.environ["RELAY_USER"],
        EMAIL_HOST_PASSWORD=os.environ["RELAY_PASSWORD"],
        EMAIL_TIMEOUT=15,
        PHI_RELAY_CA_FILE=os.environ.get("RELAY_CA_FILE", ""),
    )
    django.setup()
    headers = {}
    if os.environ.get("RELAY_CATEGORY"):
        headers["X-PHI-Category"] = os.environ["RELAY_CATEGORY"]
    msg = EmailMessage(
        subject=os.environ["RELAY_SUBJECT"],
        body="Synthetic test body.\n",
        from_email="app@clinic.example",
        to=os.environ["RELAY_TO"].split(","),
        headers=headers,
    )
    try:
        sent = msg.send(fail_silently=False)
    except smtplib.SMTPResponseException as exc:
        print(
            json.dumps(
                {
                    "error": type(exc).__name__,
                    "code": exc.smtp_code,
                    "text": exc.smtp_error.decode(),
                }
            )
        )
        return 1
    except smtplib.SMTPRecipientsRefused as exc:
        print(json.dumps({"error": type(exc).__name__, "code": 0, "text": str(exc.recipients)}))
        return 1
    except ssl.SSLError as exc:
        print(json.dumps({"error": type(exc).__name__, "code": 0, "text": exc.reason or ""}))
        return 1
    print(json.dumps({"sent": sent}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
