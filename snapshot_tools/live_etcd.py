"""A running etcd as a :class:`~snapshot_tools.sources.RecordSource`: read-only, at one revision.

``check``/``status``/``extract --etcd-endpoint URL`` read the cluster itself through
``etcd-sdk-python`` (``pyetcd``): its channel, stubs and request messages. Nothing is ever
written: only Range, Watch (to read history) and Maintenance.Status are called.

* One revision. The first Range (in :meth:`EtcdSource.__init__`) fixes ``revision`` R; every
  later page reads ``revision=R``, so the view is consistent while the cluster keeps writing.
* Latest view: Range pages of up to :data:`PAGE_KEYS` keys and about :data:`PAGE_BYTES` in key
  order (etcd returns ranges sorted by key), the next page starting after the last key returned
  and asked for while the caller judges this one. Cost: one round trip per page; on 100k
  Secrets (650 MB of values) about as much etcd CPU as client CPU (python -m bench.live_etcd).
* History (``--all-revisions``): etcd keeps every revision after the last compaction C, and
  for every key its newest revision at or below C unless that was a deletion. So the records
  are Range(revision=C) (the survivors at or below C) plus a Watch from C+1 over the whole
  keyspace up to R (every put and delete after C, in revision order), sorted by key with
  revisions ascending. The watch starts at revision 1: etcd answers a compacted start with the
  compact revision (read-only discovery of C), otherwise it streams the whole history. Cost:
  one paged Range pass at C, streamed and merged, plus a stream of the R - C revisions' events,
  sorted by key in bounded memory (:class:`~snapshot_tools.record_spill.RecordSpill`): up to
  :data:`RUN_BYTES` are held, more are written in sorted runs to a private temporary directory
  (removed on close, errors and signals) and merged back. A history that fits stays in memory;
  a never-compacted etcd of 100k Secrets (650 MB of values) needs about 650 MB of ``$TMPDIR``
  instead of 2.4 GB of RSS.
* Records equal what :class:`~snapshot_tools.snapshot.Snapshot` yields for the same data:
  ``main`` is the mod revision (a deletion's, for a tombstone), a tombstone keeps only its key.
  ``sub`` (the index of a change inside its transaction) is not in Range answers: it is
  counted from the watch stream's order for history after C and 0 elsewhere (kube-apiserver
  writes one key per transaction, so it is 0 for every Kubernetes record; no verdict uses it).
* Timeouts: every unary call carries a deadline; a watch stream is cancelled when no message
  arrives for that long, so an endpoint that accepts TCP and never answers fails, not hangs.
* There is no file, hence no SHA-256 trailer: :meth:`EtcdSource.integrity` is ``live``, which
  :func:`~snapshot_tools.integrity.judge_integrity` passes.

Errors: an unreachable endpoint, a refused TLS handshake, bad certificates, a deadline, a
refused read -> :class:`~snapshot_tools.errors.EtcdUnreachable` (exit 4), one line naming the
endpoint. An unreadable --cacert/--cert/--key file is a missing input (exit 3).

References: etcd ``api/etcdserverpb/rpc.proto`` (Range, Watch, Status),
``server/mvcc/kvstore_compaction.go``/``key_index.go`` (what compaction keeps),
``server/mvcc/watchable_store.go`` (a tombstone event carries the deletion's mod revision).
"""

from __future__ import annotations

import heapq
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import urlsplit

import grpc
import pyetcd  # type: ignore[import-untyped]
from google.protobuf.unknown_fields import UnknownFieldSet
from pyetcd import etcdrpc

from snapshot_tools.errors import EtcdUnreachable, UsageError
from snapshot_tools.mvcc import Record
from snapshot_tools.record_spill import ORDER, RecordSpill
from snapshot_tools.small_files import read_regular

if TYPE_CHECKING:
    from collections.abc import Iterator
    from types import TracebackType
    from typing import Self

__all__ = [
    "DEFAULT_TIMEOUT",
    "FIRST_PAGE_KEYS",
    "PAGE_BYTES",
    "PAGE_KEYS",
    "RUN_BYTES",
    "EtcdSource",
    "EtcdTarget",
    "ServerStatus",
    "etcd_target",
    "prefix_range",
]

DEFAULT_TIMEOUT = 10.0  # seconds per call (and per silent gap in a watch stream)
# Keys per Range page at most, and the bytes a page aims at: the first page asks for
# FIRST_PAGE_KEYS, later ones as many keys as PAGE_BYTES holds at the sizes seen so far (values
# are at most --max-request-bytes, 1.5 MiB by default), so memory stays bounded with large values
# (two pages are held) and small ones take few round trips. The receive limit is lifted as the
# test harness does (a page of large Secrets would pass gRPC's 4 MiB default).
PAGE_KEYS = 1000
FIRST_PAGE_KEYS = 100
PAGE_BYTES = 16 << 20
# History records held in memory (values included, estimated) before a sorted run of them is
# written to a temporary file; read when an EtcdSource is made (tests set it small).
RUN_BYTES = 32 << 20
_MAX_TLS_FILE = 16 << 20  # a PEM CA bundle, certificate or key; system bundles are ~0.2 MiB
_GRPC_OPTIONS = [
    ("grpc.max_receive_message_length", -1),
    ("grpc.max_send_message_length", 16 << 20),
    ("grpc.enable_retries", 0),  # a failure is reported, not retried behind our deadline
]
_DELETE = 1  # mvccpb.Event.DELETE
_ALL = b"\0"  # key and range_end of "every key"
LIVE = "live"  # integrity() of a live endpoint: no file, no trailer


@dataclass(frozen=True)
class EtcdTarget:
    """Where and how to reach etcd: ``--etcd-endpoint`` and its TLS files."""

    endpoint: str  # as the user gave it: the name every message uses
    host: str
    port: int
    tls: bool
    cacert: str | None = None
    cert: str | None = None
    key: str | None = None
    timeout: float = DEFAULT_TIMEOUT


class ServerStatus(NamedTuple):
    """Maintenance.Status of the member answering (what ``etcdctl endpoint status`` shows)."""

    version: str
    db_size: int
    leader: int
    member_id: int
    raft_index: int
    raft_term: int
    revision: int


def etcd_target(
    endpoint: str,
    cacert: str | None = None,
    cert: str | None = None,
    key: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> EtcdTarget:
    """Parse ``--etcd-endpoint`` (``https://host:port``, ``http://host:port`` or ``host:port``).

    TLS when the scheme is https, or without a scheme when a TLS file is given.

    Raises:
        UsageError: a malformed URL, another scheme, --cert without --key (or the reverse),
            TLS files with http://, a timeout that is not positive.
    """
    if (cert is None) != (key is None):
        raise UsageError("--cert and --key go together (the client certificate and its key)")
    if not timeout > 0:
        raise UsageError(f"--etcd-timeout must be positive, got {timeout}")
    has_files = any(f is not None for f in (cacert, cert, key))
    text = endpoint.strip()
    if "://" not in text:
        text = ("https://" if has_files else "http://") + text
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise UsageError(f"--etcd-endpoint {endpoint!r}: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise UsageError(f"--etcd-endpoint {endpoint!r}: use https://HOST:PORT or http://HOST:PORT")
    if not parts.hostname or port is None or parts.path not in ("", "/") or parts.query or parts.username:
        raise UsageError(f"--etcd-endpoint {endpoint!r}: expected https://HOST:PORT (the client URL)")
    tls = parts.scheme == "https"
    if has_files and not tls:
        raise UsageError(f"--etcd-endpoint {endpoint!r} is http://: --cacert/--cert/--key need https://")
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    return EtcdTarget(endpoint, host, port, tls, cacert, cert, key, timeout)


def prefix_range(prefix: bytes) -> tuple[bytes, bytes]:
    """``(key, range_end)`` of every key starting with ``prefix`` (etcd's ``GetPrefixRangeEnd``)."""
    if not prefix:
        return _ALL, _ALL
    end = bytearray(prefix)
    while end and end[-1] == 0xFF:
        end.pop()
    if not end:
        return prefix, _ALL  # all 0xff: every key from prefix on
    end[-1] += 1
    return prefix, bytes(end)


class EtcdSource:
    """A running etcd, read at the revision of its first Range (see the module docstring)."""

    def __init__(
        self, target: EtcdTarget, page_keys: int = PAGE_KEYS, page_bytes: int = PAGE_BYTES,
        run_bytes: int | None = None,
    ) -> None:  # fmt: skip
        self.target = target
        self.name = target.endpoint
        self.page_keys = page_keys
        self.page_bytes = page_bytes
        self.run_bytes = RUN_BYTES if run_bytes is None else run_bytes
        self._compacted: int | None = None
        self._spills: list[RecordSpill] = []  # history read by all_revisions(), removed on close
        self._client = _connect(target)
        try:
            first = self._call("Range", self._client.kvstub.Range, etcdrpc.RangeRequest(
                key=_ALL, range_end=_ALL, limit=1, keys_only=True
            ))  # fmt: skip
            self.revision: int = first.header.revision
        except BaseException:
            self.close()
            raise

    # -- RecordSource ----------------------------------------------------------------------

    def latest(self, prefix: bytes = b"") -> Iterator[Record]:
        return self._range(prefix, self.revision)

    def all_revisions(self, prefix: bytes = b"") -> Iterator[Record]:
        # The history is read here, before the first record is handed out (a failed watch
        # raises from this call), into a spill that the returned iterator (or close()) removes.
        compacted = self.compacted_revision()
        spill = RecordSpill(self.run_bytes)
        self._spills.append(spill)
        try:
            if compacted < self.revision:
                spill.extend(self._history(compacted + 1, prefix))
        except BaseException:
            self._drop(spill)
            raise
        return self._merged(prefix, compacted, spill)

    def _merged(self, prefix: bytes, compacted: int, spill: RecordSpill) -> Iterator[Record]:
        try:
            later = spill.sorted()
            if not compacted:
                yield from later
            else:
                # The survivors at or below C stream in key order, page by page; each comes
                # before the key's later records (its revision is lower).
                yield from heapq.merge(self._range(prefix, compacted), later, key=ORDER)
        finally:
            self._drop(spill)

    def _drop(self, spill: RecordSpill) -> None:
        spill.close()
        if spill in self._spills:
            self._spills.remove(spill)

    def as_of(self, prefix: bytes, revision: int) -> Iterator[Record]:
        """The live keys under ``prefix`` as of ``revision`` (``extract --revision``): one Range
        at that revision instead of the whole history (:func:`snapshot_tools.sources.as_of`)."""
        return self._range(prefix, revision)

    def compacted_revision(self) -> int:
        if self._compacted is None:
            self._compacted = self._probe_compaction()
        return self._compacted

    def start_integrity(self) -> None:
        pass

    def integrity(self) -> str:
        return LIVE

    def close(self) -> None:
        for spill in getattr(self, "_spills", ()):
            spill.close()
        self._spills = []
        client, self._client = getattr(self, "_client", None), None
        if client is not None:
            client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- status ----------------------------------------------------------------------------

    def server_status(self) -> ServerStatus:
        """The answering member's Maintenance.Status (version, db size, raft position)."""
        resp = self._call("Status", self._client.maintenancestub.Status, etcdrpc.StatusRequest())
        return ServerStatus(
            resp.version, resp.dbSize, resp.leader, resp.header.member_id, resp.raftIndex, resp.raftTerm,
            resp.header.revision,
        )  # fmt: skip

    # -- reads -----------------------------------------------------------------------------

    def _range(self, prefix: bytes, revision: int) -> Iterator[Record]:
        """Every live key under ``prefix`` at ``revision``, page by page, in key order.

        The next page is asked for (on a helper thread; gRPC waits without the GIL) before the
        records of this one are handed out, so etcd and the network work while the caller
        judges: at most two pages are held.
        """
        start, end = prefix_range(prefix)
        new = tuple.__new__
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="etcd-range") as pool:
            limit = min(FIRST_PAGE_KEYS, self.page_keys)
            pending = pool.submit(self._page, start, end, revision, limit)
            while True:
                resp = pending.result()
                kvs = resp.kvs
                more = bool(resp.more and kvs)
                if more:  # the next key after the last one returned, as many as PAGE_BYTES holds
                    per_key = max(1, resp.ByteSize() // len(kvs))
                    limit = max(1, min(self.page_keys, self.page_bytes // per_key))
                    pending = pool.submit(self._page, kvs[-1].key + b"\0", end, revision, limit)
                for kv in kvs:
                    yield new(Record, (
                        kv.key, kv.mod_revision, 0, kv.create_revision, kv.mod_revision, kv.version,
                        kv.lease, kv.value, False,
                    ))  # fmt: skip
                if not more:
                    return

    def _page(self, start: bytes, end: bytes, revision: int, limit: int) -> Any:
        req = etcdrpc.RangeRequest(key=start, range_end=end, limit=limit, revision=revision)
        return self._call("Range", self._client.kvstub.Range, req)

    def _probe_compaction(self) -> int:
        """etcd's compact revision, read-only: a watch from revision 1 is refused with it.

        Not compacted: the watch streams history from revision 1 instead; the first events
        answer that (and the watch is cancelled).
        """
        if self.revision <= 1:
            return 0  # nothing was ever written
        with _Watch(self, 1) as watch:
            for resp in watch:
                if resp.compact_revision:
                    return int(resp.compact_revision)
                if resp.events:
                    return 0
        raise self._error("Watch", "the watch ended without an answer")

    def _history(self, start: int, prefix: bytes) -> Iterator[Record]:
        """Every put and delete from ``start`` to :attr:`revision`, in revision order, under
        ``prefix``. The watch covers every key so that ``sub`` counts a transaction's changes."""
        new = tuple.__new__
        last, sub = 0, 0
        with _Watch(self, start) as watch:
            for resp in watch:
                if resp.compact_revision:
                    raise self._error(
                        "Watch",
                        f"revision {start} was compacted (now {resp.compact_revision}) while it was read; run again",
                    )
                if resp.canceled:
                    raise self._error("Watch", f"the watch was cancelled: {resp.cancel_reason or 'no reason given'}")
                for ev in resp.events:
                    kv = ev.kv
                    rev = kv.mod_revision  # a deletion's own revision (etcd patches it in)
                    if rev > self.revision:
                        return  # written after our revision: not in this view
                    sub = sub + 1 if rev == last else 0
                    last = rev
                    if not kv.key.startswith(prefix):
                        continue
                    if ev.type == _DELETE:
                        yield new(Record, (kv.key, rev, sub, 0, 0, 0, 0, b"", True))
                    else:
                        yield new(Record, (
                            kv.key, rev, sub, kv.create_revision, rev, kv.version, kv.lease, kv.value, False,
                        ))  # fmt: skip
                if last >= self.revision and not _is_fragment(resp):
                    return  # the last part of revision R's events
        raise self._error("Watch", f"the watch ended at revision {last}, before revision {self.revision}")

    # -- calls and errors ------------------------------------------------------------------

    def _call(self, what: str, method: Any, request: Any) -> Any:
        try:
            return method(
                request,
                self.target.timeout,
                credentials=self._client.call_credentials,
                metadata=self._client.metadata,
            )
        except grpc.RpcError as exc:
            raise self._rpc_error(what, exc) from None

    def _rpc_error(self, what: str, exc: grpc.RpcError, *, silent: bool = False) -> EtcdUnreachable:
        # The raised object is a grpc.Call too; typeshed's RpcError does not say so.
        code_of, details_of = getattr(exc, "code", None), getattr(exc, "details", None)
        code = code_of() if callable(code_of) else None
        detail = _one_line(str(details_of() if callable(details_of) else exc) or "no detail").removesuffix(": OK")
        if code is grpc.StatusCode.DEADLINE_EXCEEDED or silent:
            return self._error(what, f"no answer within {self.target.timeout:g}s")
        if code is grpc.StatusCode.UNAVAILABLE:
            return EtcdUnreachable(f"etcd at {self.name}: cannot connect: {detail}")
        if code is grpc.StatusCode.OUT_OF_RANGE:  # ErrCompacted/ErrFutureRev
            return self._error(what, f"{detail} (revision {self.revision}); run again")
        name = code.name if code is not None else "error"
        return self._error(what, f"{name}: {detail}")

    def _error(self, what: str, why: str) -> EtcdUnreachable:
        return EtcdUnreachable(f"etcd at {self.name}: {what} failed: {why}")


class _Watch:
    """One watch stream over every key from ``start``, cancelled on exit or when silent.

    It asks for fragments (``WatchCreateRequest.fragment``): etcd sends a catching-up watcher up
    to 1,000 revisions per response, which without it is one message of any size (a never-
    compacted etcd's whole history, 650 MB of values for 100k Secrets, parsed at once); with it
    a response is cut into parts of at most ``--max-request-bytes`` plus 512 KiB (2 MiB by
    default), possibly inside a revision, and every part but the last says ``fragment``.

    The request stream sends one create request and half-closes; etcd keeps the watch until
    the call ends (v3rpc ``recvLoop`` returns nil on EOF). A watchdog thread cancels the call
    when no message arrived for the target's timeout.
    """

    def __init__(self, source: EtcdSource, start: int) -> None:
        self.source = source
        client = source._client
        create = etcdrpc.WatchCreateRequest(key=_ALL, range_end=_ALL, start_revision=start)
        create.MergeFromString(_FRAGMENT)
        req = etcdrpc.WatchRequest(create_request=create)
        self._call = etcdrpc.WatchStub(client.channel).Watch(
            iter([req]), credentials=client.call_credentials, metadata=client.metadata
        )
        self._seen = time.monotonic()
        self._fired = False
        self._done = threading.Event()
        self._dog = threading.Thread(target=self._watchdog, name="etcd-watchdog", daemon=True)
        self._dog.start()

    def _watchdog(self) -> None:
        timeout = self.source.target.timeout
        while not self._done.wait(max(0.05, self._seen + timeout - time.monotonic())):
            if time.monotonic() - self._seen >= timeout:
                self._fired = True
                self._call.cancel()
                return

    def __iter__(self) -> Iterator[Any]:
        try:
            for resp in self._call:
                self._seen = time.monotonic()
                yield resp
        except grpc.RpcError as exc:
            raise self.source._rpc_error("Watch", exc, silent=self._fired) from None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._done.set()
        self._call.cancel()
        self._dog.join()


# WatchCreateRequest.fragment (field 8) and WatchResponse.fragment (field 7), both bools, are in
# etcd's rpc.proto since 3.4 but not in pyetcd's copy: the request carries the field's wire
# bytes (protobuf keeps and re-sends unknown fields), the answer's is read from its unknown fields.
_FRAGMENT = b"\x40\x01"  # field 8, varint, 1
_RESPONSE_FRAGMENT_FIELD = 7


def _is_fragment(resp: Any) -> bool:
    """Whether a WatchResponse is a part of a larger one that more parts follow (they may hold
    more events of its last revision)."""
    fields = UnknownFieldSet(resp)
    return any(fields[i].field_number == _RESPONSE_FRAGMENT_FIELD and fields[i].data for i in range(len(fields)))


def _connect(target: EtcdTarget) -> Any:
    """A pyetcd client on one endpoint; nothing is sent until the first call."""
    creds = None
    if target.tls:
        files = [(f, p) for f, p in (("--cacert", target.cacert), ("--cert", target.cert), ("--key", target.key)) if p]
        for flag, path in files:
            if b"-----BEGIN " not in (_read(path, flag) or b""):
                raise EtcdUnreachable(f"etcd at {target.endpoint}: bad TLS files: {flag} {path} is not PEM")
        try:
            creds = grpc.ssl_channel_credentials(
                root_certificates=_read(target.cacert, "--cacert"),
                private_key=_read(target.key, "--key"),
                certificate_chain=_read(target.cert, "--cert"),
            )
        except (ValueError, TypeError) as exc:  # a PEM gRPC cannot take
            raise EtcdUnreachable(f"etcd at {target.endpoint}: bad TLS files: {_one_line(str(exc))}") from None
    endpoint = pyetcd.Endpoint(target.host, target.port, secure=target.tls, creds=creds, opts=_GRPC_OPTIONS)
    return pyetcd.MultiEndpointEtcd3Client(endpoints=[endpoint], timeout=target.timeout)


def _read(path: str | None, flag: str) -> bytes | None:
    if path is None:
        return None
    # Only a regular file, and bounded: a FIFO would hang the run, /dev/zero fill memory.
    return read_regular(path, _MAX_TLS_FILE, label=f"{flag} {path}")


def _one_line(text: str, limit: int = 300) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 3] + "..."
