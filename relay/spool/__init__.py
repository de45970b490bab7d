"""The opt-in encrypted spool: messages the upstream could not take now, kept and retried.

`store` keeps each message on disk encrypted (AES-GCM under keys/spool.key), written and
fsynced before the client hears 250; `retry` sends them with exponential backoff and
bounces (`dsn`, RFC 3464) what fails for good or expires.
"""
