"""PKCS#11 sessions: one login per process, a bounded pool of work sessions, one error classifier.

* PKCS#11 login state belongs to the application, not the session: one *login session* opens
  with the PIN and stays open; work sessions open without a PIN and share that login. A session
  is used by one thread at a time (python-pkcs11 sessions are not thread-safe), so the pool
  hands out at most ``max_sessions`` of them; a caller waits up to ``acquire_timeout`` seconds
  for one, then gets :class:`BackendThrottled` (gRPC ``RESOURCE_EXHAUSTED``).
* Calls into the module are serialised by one process-wide lock per module
  (:func:`module_lock`: python-pkcs11's ``C_Initialize(NULL)`` promises the module no
  concurrent calls), so today at most one session is busy at a time; the pool keeps sessions
  and found key handles ready, bounds them, and is where a module initialised for concurrent
  use would gain parallel sessions.
* A failure meaning the token is gone (removed, session or object handles invalid, module
  failure) marks the pool broken. The next caller, once no session is in use, closes everything,
  finalises and re-initialises the module (SoftHSM and most modules read their slot list only in
  ``C_Initialize``) and logs in again: a token put back is picked up without a restart.
* A wrong PIN is never retried with the same PIN: HSMs lock the user after a few failures. The
  pool remembers a digest of the refused PIN and tries again only when the PIN source (file or
  environment) yields a different one.
* :func:`classify` is the one mapping of python-pkcs11 exceptions to :mod:`kms_plugin.errors`.
  Token, PIN and key problems are :class:`KeyUnavailable` (user-caused: ``/livez`` stays up).

References: PKCS#11 v2.40 sections 5.6 (sessions: "all sessions of an application share the
login state") and 11.6 (``C_Login``); aws-encryption-provider's bounded client.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pkcs11
from pkcs11 import exceptions as p11

from kms_plugin.errors import BackendError, BackendThrottled, ConfigError, Error, KeyUnavailable
from kms_plugin.keks.pkcs11pin import PinSource

if TYPE_CHECKING:
    from collections.abc import Iterator

log = logging.getLogger("kms_plugin.pkcs11")

_PIN_REFUSED = (p11.PinIncorrect, p11.PinInvalid, p11.PinLenRange, p11.PinExpired, p11.PinLocked)
# The token (or the module's view of it) is gone: reconnect before the next call.
_GONE = (
    p11.TokenNotPresent,
    p11.TokenNotRecognised,
    p11.DeviceRemoved,
    p11.DeviceError,
    p11.SessionHandleInvalid,
    p11.SessionClosed,
    p11.ObjectHandleInvalid,
    p11.KeyHandleInvalid,
    p11.SlotIDInvalid,
    p11.NoSuchToken,
    p11.UserNotLoggedIn,
    p11.GeneralError,
)


_MODULE_LOCKS: dict[str, threading.RLock] = {}
_MODULE_LOCKS_GUARD = threading.Lock()


def module_lock(module: str) -> threading.RLock:
    """The one lock every call into ``module`` holds, process-wide.

    python-pkcs11 initialises a module with ``C_Initialize(NULL)``, which tells it the
    application makes no concurrent calls; SoftHSM2 then runs without its own mutexes and
    concurrent operations on different sessions fail (``CKR_GENERAL_ERROR``) or crash. So calls
    are serialised here; with the local-KEK hierarchy (the default) the token is off the
    request path anyway.
    """
    with _MODULE_LOCKS_GUARD:
        return _MODULE_LOCKS.setdefault(os.path.realpath(module), threading.RLock())


@dataclass(frozen=True)
class Pkcs11Settings:
    """One token and key family; built by the CLI (``--pkcs11-*``)."""

    module: str
    token_label: str
    key_label: str
    pin: PinSource = field(default_factory=PinSource)
    max_sessions: int = 4
    acquire_timeout: float = 2.0

    def __post_init__(self) -> None:
        if self.max_sessions < 1 or self.acquire_timeout <= 0:
            raise ConfigError("--pkcs11-max-sessions and the session timeout must be positive")


def is_gone(exc: BaseException) -> bool:
    return isinstance(exc, _GONE)


def classify(exc: p11.PKCS11Error, token: str) -> Error:
    """The one mapping of a python-pkcs11 failure to our errors (never carries the PIN)."""
    name = type(exc).__name__
    if isinstance(exc, _PIN_REFUSED):
        return KeyUnavailable(f"pkcs11: token {token!r} refused the PIN ({name})")
    if isinstance(exc, p11.UserPinNotInitialized):
        return KeyUnavailable(f"pkcs11: token {token!r} has no user PIN set (softhsm2-util --init-token)")
    if isinstance(exc, (p11.NoSuchToken, p11.TokenNotPresent, p11.TokenNotRecognised, p11.DeviceRemoved)):
        return KeyUnavailable(f"pkcs11: token {token!r} is not present ({name})")
    if isinstance(exc, _GONE):
        return KeyUnavailable(f"pkcs11: token {token!r} stopped answering ({name}); reconnecting")
    if isinstance(exc, (p11.SessionCount, p11.DeviceMemory, p11.HostMemory)):
        return BackendThrottled(f"pkcs11: token {token!r} is out of sessions or memory ({name})")
    if isinstance(exc, (p11.MechanismInvalid, p11.MechanismParamInvalid, p11.FunctionNotSupported)):
        return KeyUnavailable(f"pkcs11: token {token!r} does not support AES-GCM as used here ({name})")
    return BackendError(f"pkcs11: token {token!r} failed ({name})")


class Slot:
    """One work session and the key objects found in it (handles are looked up per session)."""

    __slots__ = ("keys", "session")

    def __init__(self, session: Any) -> None:
        self.session = session
        self.keys: dict[bytes, Any] = {}

    def __repr__(self) -> str:
        return f"<pkcs11 session, {len(self.keys)} keys>"


class SessionPool:
    """At most ``settings.max_sessions`` work sessions over one login; reconnects when broken."""

    def __init__(self, settings: Pkcs11Settings, *, rw: bool = False) -> None:
        self.settings = settings
        self.rw = rw
        self.serial = ""
        self._cond = threading.Condition()
        self._idle: list[Slot] = []
        self._open = 0
        self._busy = 0
        self._broken = False
        self._lib: Any = None
        self._token: Any = None
        self._login: Any = None
        self._refused_pin: bytes | None = None

    def load(self) -> None:
        """Load the module (a bad path is a :class:`ConfigError`); no token access yet."""
        path = self.settings.module
        if not os.path.isfile(path):
            why = "not a regular file" if os.path.exists(path) else "no such file"
            raise ConfigError(f"--pkcs11-module {path}: {why}")
        try:
            self._lib = pkcs11.lib(path)
        except (p11.PKCS11Error, OSError, RuntimeError) as exc:
            raise ConfigError(f"--pkcs11-module {path}: cannot load it ({type(exc).__name__})") from None

    @contextlib.contextmanager
    def session(self) -> Iterator[Slot]:
        """A work session for this thread only; a token-gone failure inside marks the pool broken.

        Holds the module's call lock while it is out (see :func:`module_lock`).
        """
        lock = module_lock(self.settings.module)
        if not lock.acquire(timeout=self.settings.acquire_timeout):
            raise BackendThrottled(
                f"pkcs11: module busy for {self.settings.acquire_timeout:g}s (calls into it are serialised)"
            )
        try:
            slot = self._acquire()
            healthy = True
            try:
                yield slot
            except p11.PKCS11Error as exc:
                if is_gone(exc):
                    healthy = False
                raise
            finally:
                self._release(slot, healthy)
        finally:
            lock.release()

    def mark_broken(self) -> None:
        with self._cond:
            self._broken = True

    def _acquire(self) -> Slot:
        deadline = time.monotonic() + self.settings.acquire_timeout
        with self._cond:
            while True:
                if self._broken and self._busy == 0:
                    self._reset_locked()
                if not self._broken:
                    if self._token is None:
                        self._connect_locked()
                    if self._idle:
                        self._busy += 1
                        return self._idle.pop()
                    if self._open < self.settings.max_sessions:
                        slot = Slot(self._call(lambda: self._token.open(rw=self.rw)))
                        self._open += 1
                        self._busy += 1
                        return slot
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BackendThrottled(
                        f"pkcs11: no free session within {self.settings.acquire_timeout:g}s "
                        f"({self.settings.max_sessions} in use)"
                    )
                self._cond.wait(left)

    def _release(self, slot: Slot, healthy: bool) -> None:
        with self._cond:
            self._busy -= 1
            if healthy and not self._broken:
                self._idle.append(slot)
            else:
                self._broken = True
                self._open -= 1
                with contextlib.suppress(Exception):
                    slot.session.close()
            self._cond.notify_all()

    def _call(self, fn: Any) -> Any:
        try:
            return fn()
        except p11.PKCS11Error as exc:
            if is_gone(exc):
                self._broken = True
            raise classify(exc, self.settings.token_label) from None

    def _connect_locked(self) -> None:
        if self._lib is None:
            self.load()
        lib, label = self._lib, self.settings.token_label
        if not lib.initialized:
            try:
                lib.initialize()
            except p11.PKCS11Error as exc:
                raise KeyUnavailable(
                    f"pkcs11: module {self.settings.module} cannot initialise ({type(exc).__name__}): "
                    "token store missing or unreadable?"
                ) from None
        token = self._call(lambda: lib.get_token(token_label=label))
        try:
            pin = self.settings.pin.read()
        except ConfigError as exc:
            raise KeyUnavailable(f"pkcs11: {exc}") from None
        digest = hashlib.sha256(pin.encode()).digest()
        if digest == self._refused_pin:
            raise KeyUnavailable(
                f"pkcs11: token {label!r} refused the PIN from {self.settings.pin.describe()}; "
                "not retried until the PIN changes (HSMs lock the user after failed logins)"
            )
        try:
            login = token.open(rw=self.rw, user_pin=pin)
        except p11.UserAlreadyLoggedIn:
            login = self._call(lambda: token.open(rw=self.rw))  # this process is logged in already
        except p11.PKCS11Error as exc:
            if isinstance(exc, _PIN_REFUSED):
                self._refused_pin = digest
                log.debug("pkcs11: token %r refused the PIN from %s", label, self.settings.pin.describe())
            raise classify(exc, label) from None
        finally:
            del pin
        self._refused_pin = None
        self._token, self._login = token, login
        self.serial = bytes(token.serial).decode("ascii", "replace").strip()

    def _reset_locked(self) -> None:
        """Drop every session and the login, finalise the module: the next call reconnects."""
        for slot in self._idle:
            with contextlib.suppress(Exception):
                slot.session.close()
        if self._login is not None:
            with contextlib.suppress(Exception):
                self._login.close()
        self._idle, self._open = [], 0
        self._token = self._login = None
        if self._lib is not None and self._lib.initialized:
            with contextlib.suppress(Exception):
                self._lib.finalize()
        self._broken = False
        log.info("pkcs11: sessions to token %r dropped; reconnecting", self.settings.token_label)

    def close(self) -> None:
        with module_lock(self.settings.module), self._cond:
            for slot in self._idle:
                with contextlib.suppress(Exception):
                    slot.session.close()
            if self._login is not None:
                with contextlib.suppress(Exception):
                    self._login.close()
            self._idle, self._open = [], 0
            self._token = self._login = None

    def __repr__(self) -> str:
        return f"SessionPool(token={self.settings.token_label!r}, open={self._open}, busy={self._busy})"
