"""CurveZMQ client authorisation that reports refusals.

pyzmq's authenticator refuses an unlisted key silently; an operator must see an unauthorised
peer knocking. The allowed keys are the public keys in the server's clients directory (written
by `asyncrl keys`), read once at start; each refusal calls `on_denied(reason)` in the
authenticator's thread, where the learner counts it (`asyncrl_auth_failures_total`).
"""

from __future__ import annotations

from collections.abc import Callable

import zmq
from zmq.auth import load_certificates
from zmq.auth.thread import ThreadAuthenticator


class _AllowedKeys:
    """The credentials provider pyzmq's `configure_curve_callback` asks about each client."""

    def __init__(self, keys: set[bytes], on_denied: Callable[[str], None]):
        self.keys = keys
        self.on_denied = on_denied

    def callback(self, domain: str, z85_key: bytes) -> bool:
        if z85_key in self.keys:
            return True
        self.on_denied("unknown_key")
        return False


def start_authenticator(
    context: zmq.Context, key_dirs: str | list[str], on_denied: Callable[[str], None]
) -> ThreadAuthenticator:
    """Start a ZAP handler on `context` allowing the public keys in `key_dirs` (the clients'
    and the operators' directories: which messages each may send is the hub's business)."""
    keys: set[bytes] = set()
    for d in [key_dirs] if isinstance(key_dirs, str) else key_dirs:
        keys.update(load_certificates(d))
    auth = ThreadAuthenticator(context)
    auth.start()
    auth.configure_curve_callback(domain="*", credentials_provider=_AllowedKeys(keys, on_denied))
    return auth
