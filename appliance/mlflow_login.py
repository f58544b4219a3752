"""MLflow's login check on the appliance's servers: basic auth whose slow hash runs once per password.

MLflow checks a password with a deliberately slow hash (werkzeug's scrypt: about 0.1 s of CPU here)
on every request, and the appliance's clients call it often: each model server replica polls the
registry, the controller and the trainer set tags and aliases one request at a time. Uncached, a
cluster's MLflow server spent half a core on hashes alone with two replicas polling. MLflow's own
cache (``auth_cache_ttl_seconds``) keeps a good login for a fixed time on one server, so an account
deleted or a password changed through another server sharing the accounts (a cluster's control
hosts) would still log in there until the time ran out.

This check keeps what was verified instead of for how long: per account and keyed digest of the
password, the stored hash the password matched. Every request still reads the account's row (as
MLflow does), and skips the slow hash only while that row holds the very hash verified before. A
changed password has a new salt, so a new hash; a deleted account has no row: both are refused at
once, on every server. A wrong password is never remembered (each guess pays the slow hash), the
remembered digests are keyed with a secret made at each start (useless for an offline guess), and
the memory is bounded (``REMEMBERED``, least recently used first out).

MLflow calls it through its ``authorization_function`` setting (``mlflow_auth.auth_ini``), on both
its Flask and FastAPI routes.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

AUTHORIZATION_FUNCTION = "appliance.mlflow_login:authenticate_request_basic_auth"
"""The ``authorization_function`` of every MLflow server the appliance runs."""
REMEMBERED = 10_000
"""Logins remembered at most, per server process: far more than a stack's accounts."""


class VerifiedLogins:
    """Which (account, password) pairs matched which stored hash; see the module's docstring."""

    def __init__(
        self,
        stored_hash: Callable[[str], str | None],
        matches: Callable[[str, str], bool],
        limit: int = REMEMBERED,
    ) -> None:
        self._stored_hash = stored_hash
        self._matches = matches
        self._limit = limit
        self._key = secrets.token_bytes(32)
        self._seen: OrderedDict[tuple[str, bytes], str] = OrderedDict()
        self._lock = threading.Lock()

    def check(self, username: str, password: str) -> bool:
        """Whether ``password`` is ``username``'s password now."""
        stored = self._stored_hash(username)
        if stored is None:
            return False
        key = (username, hmac.new(self._key, password.encode(), hashlib.sha256).digest())
        with self._lock:
            if self._seen.get(key) == stored:
                self._seen.move_to_end(key)
                return True
        # The slow hash outside the lock: other accounts' checks go on meanwhile.
        if not self._matches(stored, password):
            return False
        with self._lock:
            self._seen[key] = stored
            self._seen.move_to_end(key)
            while len(self._seen) > self._limit:
                self._seen.popitem(last=False)
        return True


def _stored_hash(username: str) -> str | None:
    """The account's stored password hash from MLflow's user store, None when there is no account."""
    from mlflow.exceptions import MlflowException
    from mlflow.server.auth import store

    try:
        return str(store.get_user(username).password_hash)
    except MlflowException:
        return None


def _matches(stored: str, password: str) -> bool:
    from werkzeug.security import check_password_hash

    return check_password_hash(stored, password)


_LOGINS = VerifiedLogins(_stored_hash, _matches)


def authenticate_request_basic_auth() -> Any:
    """MLflow's ``authorization_function``: the request's basic credentials when they log in, else
    MLflow's own 401 answer (which asks the client for credentials)."""
    from flask import request
    from mlflow.server import auth

    credentials = request.authorization
    if (
        credentials is not None
        and credentials.type == "basic"
        and credentials.username
        and credentials.password is not None
        and login_is_good(credentials.username, credentials.password)
    ):
        return credentials
    return auth.make_basic_auth_response()


def login_is_good(username: str, password: str) -> bool:
    """Whether ``username`` logs in with ``password`` on this server: MLflow's check above, and the
    one ``mlflow_gate`` makes before it takes a request's body."""
    from mlflow.server import auth

    return _LOGINS.check(username, password) and not _legacy_admin_login(auth, username, password)


def _legacy_admin_login(auth: Any, username: str, password: str) -> bool:
    """Whether MLflow refuses this login as an admin still holding the default password older
    MLflow releases shipped (its own check, where this MLflow has it: the same refusal as its
    built-in login). Costs nothing unless the password is that one."""
    refused = getattr(auth, "_is_disabled_legacy_admin_login", None)
    return bool(refused(username, password)) if callable(refused) else False
