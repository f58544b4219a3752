"""The login check MLflow's servers run (appliance.mlflow_login): the slow hash once per password,
and a changed password or a deleted account refused at once."""

from __future__ import annotations

import threading

from werkzeug.security import check_password_hash, generate_password_hash

from appliance.mlflow_login import VerifiedLogins


class Accounts:
    """A user store as MLflow's: account -> stored hash, and how many slow checks ran."""

    def __init__(self, **passwords: str) -> None:
        self.hashes: dict[str, str] = {}
        self.checks = 0
        for username, password in passwords.items():
            self.set(username, password)

    def set(self, username: str, password: str) -> None:
        """A password set (again) through any server: a new salt, so a new stored hash. pbkdf2 with
        one round: these tests count checks, they need no slow hash."""
        self.hashes[username] = generate_password_hash(password, "pbkdf2:sha256:1")

    def stored_hash(self, username: str) -> str | None:
        return self.hashes.get(username)

    def matches(self, stored: str, password: str) -> bool:
        self.checks += 1
        return check_password_hash(stored, password)

    def logins(self, limit: int = 100) -> VerifiedLogins:
        return VerifiedLogins(self.stored_hash, self.matches, limit)


def test_a_good_password_pays_the_slow_hash_once() -> None:
    accounts = Accounts(reader="r" * 32, writer="w" * 32)
    logins = accounts.logins()
    assert all(logins.check("reader", "r" * 32) for _ in range(5))
    assert all(logins.check("writer", "w" * 32) for _ in range(5))
    assert accounts.checks == 2


def test_a_wrong_password_is_refused_every_time_and_never_remembered() -> None:
    accounts = Accounts(reader="r" * 32)
    logins = accounts.logins()
    assert logins.check("reader", "r" * 32)
    assert not any(logins.check("reader", guess) for guess in ("r" * 31, "", "R" * 32, "r" * 32 + " "))
    assert not logins.check("writer", "r" * 32)  # another account's password: no such account
    assert not logins.check("reader", "x")
    assert accounts.checks == 1 + 5  # every wrong guess paid the slow hash, the unknown account none


def test_a_changed_password_is_refused_at_once_and_the_new_one_logs_in() -> None:
    accounts = Accounts(reader="old-password")
    logins = accounts.logins()
    assert logins.check("reader", "old-password")
    # changed through another server sharing the accounts: only the stored hash tells
    accounts.set("reader", "new-password")
    assert not logins.check("reader", "old-password")
    assert logins.check("reader", "new-password")


def test_the_same_password_set_again_is_checked_again() -> None:
    accounts = Accounts(reader="same")
    logins = accounts.logins()
    assert logins.check("reader", "same")
    accounts.set("reader", "same")  # a new salt
    assert logins.check("reader", "same")
    assert accounts.checks == 2


def test_a_deleted_account_is_refused_at_once_and_a_new_one_of_that_name_needs_its_own_password() -> None:
    accounts = Accounts(edge="box-one")
    logins = accounts.logins()
    assert logins.check("edge", "box-one")
    del accounts.hashes["edge"]
    assert not logins.check("edge", "box-one")
    accounts.set("edge", "box-two")
    assert not logins.check("edge", "box-one")
    assert logins.check("edge", "box-two")


def test_the_memory_is_bounded_and_the_least_recently_used_leaves_first() -> None:
    accounts = Accounts(**{f"user{i}": f"password{i}" for i in range(4)})
    logins = accounts.logins(limit=2)
    for i in (0, 1, 0, 2):  # user0 used again before user2 arrives: user1 leaves
        assert logins.check(f"user{i}", f"password{i}")
    assert accounts.checks == 3
    assert logins.check("user0", "password0") and logins.check("user2", "password2")
    assert accounts.checks == 3
    assert logins.check("user1", "password1")
    assert accounts.checks == 4


def test_passwords_are_remembered_only_as_keyed_digests() -> None:
    accounts = Accounts(reader="a-very-secret-password")
    logins = accounts.logins()
    assert logins.check("reader", "a-very-secret-password")
    assert "a-very-secret-password" not in repr(vars(logins))
    other = accounts.logins()
    assert other.check("reader", "a-very-secret-password")
    assert vars(logins)["_seen"].keys() != vars(other)["_seen"].keys()  # each process its own key


def test_checks_from_many_threads_agree() -> None:
    accounts = Accounts(**{f"user{i}": f"password{i}" for i in range(8)})
    logins = accounts.logins(limit=4)
    wrong: list[str] = []

    def hammer(i: int) -> None:
        for n in range(200):
            user = f"user{(i + n) % 8}"
            if not logins.check(user, f"password{(i + n) % 8}") or logins.check(user, "nope"):
                wrong.append(user)

    threads = [threading.Thread(target=hammer, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert wrong == []


def test_mlflows_refusal_of_a_legacy_admin_password_is_kept_where_mlflow_has_it() -> None:
    from types import SimpleNamespace

    from appliance.mlflow_login import _legacy_admin_login

    asked: list[tuple[str, str]] = []

    def refuses(username: str, password: str) -> bool:
        asked.append((username, password))
        return username == "admin" and password == "password1234"

    mlflow_auth = SimpleNamespace(_is_disabled_legacy_admin_login=refuses)
    assert _legacy_admin_login(mlflow_auth, "admin", "password1234")
    assert not _legacy_admin_login(mlflow_auth, "admin", "a-generated-secret")
    assert asked == [("admin", "password1234"), ("admin", "a-generated-secret")]
    assert not _legacy_admin_login(SimpleNamespace(), "admin", "password1234")  # an MLflow without it
