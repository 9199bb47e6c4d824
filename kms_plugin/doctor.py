"""``kms-plugin doctor``: the preflight an operator runs before (re)starting kube-apiserver.

Every check is a :class:`Check` record (name, status, detail, fix): this module returns data and
prints nothing. The checks, in order:

* ``config``: the EncryptionConfiguration parses and validates as kube-apiserver's strict loader
  would (``snapshot_tools.config``; a file that does not is exit 2, like any bad input file);
* ``kms-provider``: the config has a kms provider (the one ``--endpoint`` names, if given);
* per provider: ``kms-api-version`` (v2), ``kms-name``, ``kms-endpoint`` (a unix socket path,
  absolute, not abstract), ``kms-timeout`` (within :data:`MIN_TIMEOUT`..:data:`MAX_TIMEOUT`),
  ``socket`` (exists, is a socket), ``socket-permissions`` (the apiserver's user can connect;
  nobody else can), ``plugin-status`` (``v2``, ``healthz`` ``ok``, key_id non-empty and at most
  1 KiB), ``plugin-roundtrip`` (Encrypt of 32 random bytes, the Status key_id, the apiserver's
  size rules, Decrypt gives them back);
* ``identity-position``: ``identity``, where listed, does not come first;
* with ``--apiserver-manifest``: ``manifest-socket-mount`` per provider and
  ``manifest-config-flag``.

A check that cannot run because an earlier one failed is ``skip``; a report passes only when
every check passes. The plugin calls use the provider's own ``timeout``, as the apiserver does.

Why ``snapshot_tools`` is imported here, lazily: the strict config parser (upstream's field
rules, wording and hostile-file bounds) lives in ``snapshot_tools.config`` and is the one copy
both CLIs must agree on. ``kms_plugin`` otherwise never imports ``snapshot_tools``; the import
sits inside :func:`load_encryption_config` only, so ``kms-plugin serve`` and every other module
never load it, and there is no import cycle (``snapshot_tools`` imports ``kms_plugin.api`` at
import time; by the time the doctor runs, both are complete). Moving 1000 lines of parser into a
third package would be the cleaner graph, but that file belongs to the snapshot tools and other
work edits it; one function is the whole coupling.

Permissions are judged by the plain mode bits, as if the apiserver had no ``CAP_DAC_OVERRIDE``:
hardened apiserver pods drop capabilities (our own static pod does), and a socket only root's
override can open breaks on the first hardening.

References: spec ``k8s-encryption-formats.md`` sections 6.6 (Status rules), 7.2 (message limits),
8 (EncryptionConfiguration); apiserver ``kmsv2/envelope.go`` ``ValidateEncryptedObject``;
``encryptionconfig/config.go`` ``isKMSv2ProviderHealthyAndMaybeRotateDEK``.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any, NamedTuple

from kms_plugin.apiserver_manifest import CONFIG_FLAG, load_apiserver_manifest
from kms_plugin.endpoint import parse_unix_endpoint
from kms_plugin.errors import ConfigError, Error, InvalidCiphertext, PluginError, PluginUnavailable
from kms_plugin.terminal import printable

if TYPE_CHECKING:
    from pathlib import Path

    from kms_plugin.apiserver_manifest import ApiserverPod
    from kms_plugin.client import KMSv2Client, StatusResult

    # Types only: nothing of snapshot_tools loads until load_encryption_config runs.
    from snapshot_tools.config_model import EncryptionConfig, KMSProvider



class CheckStatus(StrEnum):
    PASS = "pass"  # noqa: S105 - a check status, not a password
    FAIL = "fail"
    SKIP = "skip"


PASS, FAIL, SKIP = CheckStatus.PASS, CheckStatus.FAIL, CheckStatus.SKIP

# Below 1 s a remote KMS (our AWS backend budgets 2.5 s per call) fails Status under load and the
# apiserver marks the provider unhealthy; above 15 s (the probe timeout kubeadm gives the
# apiserver) a hung plugin makes the apiserver's own probes time out instead of failing with a
# reason.
MIN_TIMEOUT = 1.0
MAX_TIMEOUT = 15.0
MAX_KEY_ID = 1024  # KeyIDMaxSize
MAX_CIPHERTEXT = 1024  # encryptedDEKSourceMaxSize
MAX_ANNOTATIONS = 32 * 1024  # annotationsMaxSize
STATUS_VERSIONS = ("v2", "v2beta1")  # KMSAPIVersionv2, KMSAPIVersionv2beta1


@dataclass(frozen=True)
class Check:
    """One line of the report. ``fix`` says what to change when ``status`` is ``fail``."""

    name: str
    status: CheckStatus
    detail: str
    fix: str = ""
    provider: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "provider": self.provider,
            "status": self.status.value,
            "detail": self.detail,
            "fix": self.fix,
        }


@dataclass(frozen=True)
class DoctorOptions:
    config: Path
    endpoint: str | None = None
    manifest: Path | None = None
    apiserver_user: str | None = None


@dataclass(frozen=True)
class DoctorReport:
    config: str
    apiserver_user: str
    checks: tuple[Check, ...]

    @property
    def ok(self) -> bool:
        return all(c.status == PASS for c in self.checks)

    @property
    def failed(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if c.status == FAIL)

    def to_json(self) -> dict[str, Any]:
        return {
            "config": self.config,
            "apiserver_user": self.apiserver_user,
            "ok": self.ok,
            "checks": [c.to_json() for c in self.checks],
        }


# -- who the apiserver runs as ----------------------------------------------------------------


@dataclass(frozen=True)
class Principal:
    """A user as the kernel's permission check sees it: uid and every group id."""

    label: str
    uid: int
    gids: frozenset[int]


def resolve_principal(spec: str) -> Principal:
    """``NAME``, ``UID`` or ``UID:GID``; a known user brings its primary and supplementary groups.

    Raises:
        ConfigError: an unknown user name or a malformed spec.
    """
    text, _, gid_text = spec.partition(":")
    if gid_text:
        if not (text.isdigit() and gid_text.isdigit()):
            raise ConfigError(f"--apiserver-user {spec!r}: use NAME, UID or UID:GID")
        return Principal(f"uid {text}, gid {gid_text}", int(text), frozenset({int(gid_text)}))
    try:
        entry = pwd.getpwuid(int(text)) if text.isdigit() else pwd.getpwnam(text)
    except KeyError:
        if text.isdigit():
            return Principal(f"uid {text}", int(text), frozenset())
        raise ConfigError(f"--apiserver-user {spec!r}: no such user") from None
    groups = frozenset(os.getgrouplist(entry.pw_name, entry.pw_gid))
    return Principal(f"{entry.pw_name}, uid {entry.pw_uid}", entry.pw_uid, groups)


def _pod_principal(pod: ApiserverPod) -> Principal | None:
    if pod.run_as_user is None:
        return None
    base = resolve_principal(str(pod.run_as_user))
    gids = set(pod.supplemental_groups)
    if pod.run_as_group is not None:
        gids.add(pod.run_as_group)
    else:
        gids |= base.gids
    return Principal(f"{base.label} (runAsUser in the manifest)", base.uid, frozenset(gids))


def _allowed(who: Principal, st: os.stat_result, bit: int) -> bool:
    """DAC without capabilities: owner bits, else group bits, else other bits (``bit`` = 4/2/1)."""
    mode = st.st_mode
    if who.uid == st.st_uid:
        return bool(mode & (bit << 6))
    if st.st_gid in who.gids:
        return bool(mode & (bit << 3))
    return bool(mode & bit)


def _owner(st: os.stat_result) -> str:
    try:
        user = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        user = str(st.st_uid)
    try:
        group = grp.getgrgid(st.st_gid).gr_name
    except KeyError:
        group = str(st.st_gid)
    return f"{user}:{group}"


# -- the config -------------------------------------------------------------------------------


def load_encryption_config(path: Path) -> EncryptionConfig:
    """The config as kube-apiserver would load it (a ``snapshot_tools`` ``EncryptionConfig``).

    Raises:
        ConfigError: missing, unreadable or invalid; an RKE state file (not what the apiserver reads).
    """
    # The one place kms_plugin uses snapshot_tools: see the module docstring.
    from snapshot_tools.config import load_config_file
    from snapshot_tools.errors import Error as SnapshotToolsError

    try:
        configs = load_config_file(path)
    except SnapshotToolsError as exc:
        raise ConfigError(f"--encryption-config {exc}") from None
    if len(configs) != 1 or configs[0].path != str(path):
        raise ConfigError(
            f"--encryption-config {printable(str(path))} is an RKE cluster state, not the file "
            "kube-apiserver reads; give the encryption config itself (RKE: /etc/kubernetes/ssl/encryption.yaml)"
        )
    return configs[0]


def _kms_providers(config: EncryptionConfig) -> list[tuple[KMSProvider, list[str]]]:
    """Each distinct kms provider with the resources it writes (first provider of their rule)."""
    found: dict[tuple[str, str, str], tuple[KMSProvider, list[str]]] = {}
    for rule in config.rules:
        for i, entry in enumerate(rule.providers):
            if entry.kms is None:
                continue
            kms = entry.kms
            _, writes = found.setdefault((kms.api_version, kms.name, kms.endpoint), (kms, []))
            if i == 0:
                writes.extend(rule.resources)
    return list(found.values())


# -- checks -----------------------------------------------------------------------------------


class _Report:
    def __init__(self) -> None:
        self.checks: list[Check] = []

    def add(self, name: str, ok: bool, detail: str, fix: str = "", provider: str | None = None) -> bool:
        self.checks.append(Check(name, PASS if ok else FAIL, detail, "" if ok else fix, provider))
        return ok

    def skip(self, name: str, why: str, provider: str | None = None) -> None:
        self.checks.append(Check(name, SKIP, why, "", provider))


def _same_endpoint(a: str, b: str) -> bool:
    try:
        return parse_unix_endpoint(a) == parse_unix_endpoint(b)
    except ConfigError:
        return a == b


def run_doctor(options: DoctorOptions) -> DoctorReport:
    """Run every check. Raises :class:`ConfigError` (exit 2) for a config or manifest that
    cannot be read or parsed, a bad ``--endpoint`` or ``--apiserver-user``."""
    if options.endpoint is not None:
        try:
            parse_unix_endpoint(options.endpoint)
        except ConfigError as exc:
            raise ConfigError(f"--endpoint: {exc}") from None
    pod = load_apiserver_manifest(options.manifest) if options.manifest is not None else None
    who: Principal | None = None
    if options.apiserver_user is not None:
        who = resolve_principal(options.apiserver_user)
    elif pod is not None:
        who = _pod_principal(pod)
    if who is None:
        who = resolve_principal("0")
    config = load_encryption_config(options.config)
    report = _Report()
    providers = _kms_providers(config)
    report.add(
        "config",
        True,
        f"{options.config!s}: valid; {len(config.rules)} resource rule(s), "
        f"{len(providers)} kms provider(s)",
    )
    selected = providers
    if options.endpoint is not None:
        selected = [p for p in providers if _same_endpoint(p[0].endpoint, options.endpoint)]
    if not providers:
        report.add(
            "kms-provider",
            False,
            "the config lists no kms provider",
            "add a provider `kms: {apiVersion: v2, name: kms-plugin, endpoint: "
            "unix:///var/run/kms-plugin/kms.sock, timeout: 3s}` first in providers",
        )
    elif not selected:
        listed = ", ".join(p[0].endpoint for p in providers)
        report.add(
            "kms-provider",
            False,
            f"no kms provider has endpoint {options.endpoint!s} (the config lists {listed})",
            f"set the provider's endpoint to {options.endpoint!s}, or serve the "
            f"plugin with --listen {providers[0][0].endpoint}",
        )
    else:
        parts = []
        for kms, writes in selected:
            role = f"writes {', '.join(writes)}" if writes else "decrypt-only (not first in any rule)"
            parts.append(f"{kms.name} ({role})")
        report.add("kms-provider", True, "; ".join(parts))
    for kms, _ in selected:
        _provider_checks(report, kms, pod, who)
    _identity_check(report, config)
    if pod is not None:
        _config_flag_check(report, pod, options.config)
    return DoctorReport(str(options.config), who.label, tuple(report.checks))


def _provider_checks(report: _Report, kms: KMSProvider, pod: ApiserverPod | None, who: Principal) -> None:
    name = kms.name
    v2 = kms.api_version == "v2"
    report.add(
        "kms-api-version",
        v2,
        f"apiVersion {kms.api_version}",
        "set `apiVersion: v2` on the kms provider: KMS v1 is deprecated (1.28) and off by default "
        "since 1.29 (the apiserver refuses to start without --feature-gates=KMSv1=true); "
        "kms-plugin serves v2",
        name,
    )
    sane_name = name.isprintable() and not any(ch.isspace() for ch in name)
    report.add(
        "kms-name",
        sane_name,
        f"{name}: stored values will start with k8s:enc:kms:{kms.api_version}:{name}:",
        "use a name of printable characters without spaces (it is written into every stored "
        "value; never rename it while data written under it remains)",
        name,
    )
    endpoint_ok = False
    path = ""
    try:
        ep = parse_unix_endpoint(kms.endpoint)
    except ConfigError as exc:
        report.add("kms-endpoint", False, str(exc), "use unix:///absolute/path/to/kms.sock", name)
    else:
        if ep.abstract:
            report.add(
                "kms-endpoint",
                False,
                f"{kms.endpoint} is an abstract socket: it has no file mode, so any "
                "process in the network namespace can call Decrypt",
                "serve on a socket file, e.g. unix:///var/run/kms-plugin/kms.sock, and use that endpoint",
                name,
            )
        else:
            endpoint_ok = report.add("kms-endpoint", True, f"socket path {ep.path}", provider=name)
            path = ep.path
    timeout = kms.timeout_s
    report.add(
        "kms-timeout",
        MIN_TIMEOUT <= timeout <= MAX_TIMEOUT,
        f"timeout {timeout:g}s",
        f"use a timeout between {MIN_TIMEOUT:g}s and {MAX_TIMEOUT:g}s (3s is the default)",
        name,
    )
    if pod is not None:
        _socket_mount_check(report, kms, pod)
    if not endpoint_ok:
        for check in ("socket", "socket-permissions", "plugin-status", "plugin-roundtrip"):
            report.skip(check, "no usable socket path", name)
        return
    host_path = path
    if pod is not None:
        mount = pod.mount_for(path)
        mapped = mount.host_path_of(path) if mount is not None else None
        if mapped is not None:
            host_path = mapped
    socket_ok = _socket_checks(report, name, host_path, who)
    if not socket_ok:
        for check in ("plugin-status", "plugin-roundtrip"):
            report.skip(check, "no socket to call", name)
        return
    if not v2:
        for check in ("plugin-status", "plugin-roundtrip"):
            report.skip(check, "the provider is KMS v1; the doctor calls KMS v2", name)
        return
    from kms_plugin.client import KMSv2Client

    where = f"unix://{host_path}"
    with KMSv2Client(where, timeout=min(timeout, MAX_TIMEOUT)) as client:
        status = _status_check(report, name, client, kms.endpoint)
        if status is None:
            report.skip("plugin-roundtrip", "Status did not answer", name)
            return
        _roundtrip_check(report, name, client, status.key_id)


def _socket_checks(report: _Report, name: str, path: str, who: Principal) -> bool:
    start = f"start the plugin: kms-plugin serve --listen unix://{path} ..."
    try:
        st = os.stat(path)
    except FileNotFoundError:
        report.add("socket", False, f"{path} does not exist", f"{start} (or fix the endpoint)", name)
        report.skip("socket-permissions", "no socket", name)
        return False
    except OSError as exc:
        report.add(
            "socket", False, f"{path}: {exc.strerror}",
            "make the socket's directories searchable by the user running the doctor", name,
        )
        report.skip("socket-permissions", "no socket", name)
        return False
    if not stat.S_ISSOCK(st.st_mode):
        report.add(
            "socket", False, f"{path} exists but is not a socket",
            f"remove or move the file, then {start}", name,
        )
        report.skip("socket-permissions", "no socket", name)
        return False
    report.add("socket", True, f"{path} is a socket", provider=name)
    ok, detail, fix = _permission_verdict(path, st, who)
    report.add("socket-permissions", ok, detail, fix, name)
    return True


class _Verdict(NamedTuple):
    ok: bool
    detail: str
    fix: str = ""


def _permission_verdict(path: str, st: os.stat_result, who: Principal) -> _Verdict:
    mode = stat.S_IMODE(st.st_mode)
    facts = f"{path} mode {mode:04o} {_owner(st)}; apiserver runs as {who.label}"
    fix_mode = (
        "serve with --socket-mode 0600 as the apiserver's user (root by default), or 0660 with "
        "the socket's group among the apiserver's groups"
    )
    if mode & 0o002:
        return _Verdict(
            False,
            f"{facts}: every local user can call Decrypt and unwrap the apiserver's data keys",
            fix_mode,
        )
    if not _allowed(who, st, 2):
        return _Verdict(
            False,
            f"{facts}: no write permission for the apiserver, connect() fails with EACCES",
            fix_mode,
        )
    directory = os.path.dirname(path) or "/"
    try:
        dst = os.stat(directory)
    except OSError as exc:
        return _Verdict(False, f"{directory}: {exc.strerror}", "fix the directory")
    if stat.S_IMODE(dst.st_mode) & 0o002:
        return _Verdict(
            False,
            f"directory {directory} (mode {stat.S_IMODE(dst.st_mode):04o}) is writable by "
            "every user: anyone can put their own listener in the socket's place and receive the "
            "apiserver's data keys",
            f"chmod o-w {directory} (a root-owned 0700 or 0750 directory for the socket)",
        )
    current = directory
    while True:
        try:
            cst = os.stat(current)
        except OSError:
            break
        if not _allowed(who, cst, 1):
            return _Verdict(
                False,
                f"directory {current} (mode {stat.S_IMODE(cst.st_mode):04o} {_owner(cst)}) "
                f"is not searchable by the apiserver ({who.label})",
                f"let the apiserver's user search {current} (chmod or chgrp)",
            )
        if current == "/":
            break
        current = os.path.dirname(current)
    return _Verdict(True, f"{facts}: it can connect, other users cannot")


def _status_check(report: _Report, name: str, client: KMSv2Client, endpoint: str) -> StatusResult | None:
    try:
        st = client.status()
    except PluginUnavailable as exc:
        report.add(
            "plugin-status",
            False,
            f"no answer: {exc}",
            f"the socket has no live plugin behind it (a plugin that died leaves its socket file): "
            f"start or restart kms-plugin serve --listen {endpoint}",
            name,
        )
        return None
    except Error as exc:
        report.add("plugin-status", False, f"Status failed: {exc}", "check the plugin's log", name)
        return None
    problems = []
    if st.version not in STATUS_VERSIONS:
        problems.append(f"version {st.version!r} is not v2")
    if st.healthz != "ok":
        problems.append(f"healthz {st.healthz!r}")
    size = len(st.key_id.encode())
    if size == 0:
        problems.append("key_id is empty")
    elif size > MAX_KEY_ID:
        problems.append(f"key_id is {size} bytes, over {MAX_KEY_ID}")
    detail = f"version {st.version}, healthz {st.healthz}, key_id {st.key_id}"
    if problems:
        detail = "; ".join(problems) + " (the apiserver refuses such a Status)"
    report.add(
        "plugin-status",
        not problems,
        detail,
        "fix what healthz names (the plugin's /healthz and log say more), then check again",
        name,
    )
    return st


def _roundtrip_check(report: _Report, name: str, client: KMSv2Client, key_id: str) -> None:
    plaintext = os.urandom(32)  # what the apiserver sends: a 32-byte seed
    fix = "check the plugin's log and /healthz; the apiserver cannot write while this fails"
    try:
        enc = client.encrypt(plaintext)
    except (InvalidCiphertext, PluginError, PluginUnavailable) as exc:
        report.add("plugin-roundtrip", False, f"Encrypt failed: {exc}", fix, name)
        return
    problems = []
    if enc.key_id != key_id:
        problems.append("Encrypt key_id differs from Status key_id (the apiserver discards the new seed)")
    if not enc.ciphertext or len(enc.ciphertext) > MAX_CIPHERTEXT:
        problems.append(f"ciphertext is {len(enc.ciphertext)} bytes (1..{MAX_CIPHERTEXT} allowed)")
    total = sum(len(k.encode()) + len(v) for k, v in enc.annotations.items())
    if total > MAX_ANNOTATIONS:
        problems.append(f"annotations total {total} bytes, over {MAX_ANNOTATIONS}")
    if problems:
        report.add("plugin-roundtrip", False, "; ".join(problems), fix, name)
        return
    try:
        back = client.decrypt(enc.ciphertext, enc.key_id, enc.annotations)
    except (InvalidCiphertext, PluginError, PluginUnavailable) as exc:
        report.add("plugin-roundtrip", False, f"Decrypt of a fresh ciphertext failed: {exc}", fix, name)
        return
    ok = back == plaintext
    report.add(
        "plugin-roundtrip",
        ok,
        "Encrypt+Decrypt of 32 random bytes gave them back" if ok else "Decrypt returned different bytes",
        fix,
        name,
    )


def _identity_check(report: _Report, config: EncryptionConfig) -> None:
    first: list[str] = []
    middle: list[str] = []
    for rule in config.rules:
        kinds = [p.kind for p in rule.providers]
        if "identity" not in kinds:
            continue
        where = f"{rule.position} ({', '.join(rule.resources)})"
        at = kinds.index("identity")
        if at == 0:
            first.append(where)
        elif at != len(kinds) - 1:
            middle.append(where)
    if first:
        report.add(
            "identity-position",
            False,
            f"identity is the first provider in {'; '.join(first)}: the apiserver accepts this and "
            "writes every new object of those resources in plaintext (encryption disabled)",
            "move `identity: {}` to the end of providers (it then only reads objects written "
            "before encryption), or remove it",
        )
        return
    detail = "identity is not listed"
    if middle:
        # The apiserver reads the same wherever identity stands after the first provider: it never
        # decrypts and its failures are skipped silently.
        detail = f"identity is not first in {'; '.join(middle)} (reads behave as if it were last)"
    elif any("identity" in [p.kind for p in r.providers] for r in config.rules):
        detail = "identity is listed last (reads plaintext written before encryption)"
    report.add("identity-position", True, detail)


def _socket_mount_check(report: _Report, kms: KMSProvider, pod: ApiserverPod) -> None:
    name = kms.name
    try:
        ep = parse_unix_endpoint(kms.endpoint)
    except ConfigError:
        report.skip("manifest-socket-mount", "no usable endpoint", name)
        return
    if ep.abstract:
        report.add(
            "manifest-socket-mount",
            pod.host_network,
            "abstract socket: the apiserver pod " + ("shares" if pod.host_network else "does not share")
            + " the host network namespace",
            "set hostNetwork: true on the apiserver pod (or use a socket file)",
            name,
        )
        return
    directory = os.path.dirname(ep.path)
    mount = pod.mount_for(ep.path)
    add_mount = (
        f"add a hostPath volume (path {directory}, type DirectoryOrCreate) and a "
        f"volumeMount at {directory} to the {pod.container} container"
    )
    if mount is None:
        report.add(
            "manifest-socket-mount", False,
            f"no volumeMount of {pod.container} covers {ep.path}: the apiserver "
            "cannot see the plugin's socket",
            add_mount, name,
        )
    elif mount.host_path is None:
        report.add(
            "manifest-socket-mount", False,
            f"{ep.path} is under volume {mount.name} ({mount.volume_kind}), not a "
            "hostPath: the plugin's socket on the host is not there",
            add_mount, name,
        )
    elif mount.mount_path == ep.path:
        report.add(
            "manifest-socket-mount", False,
            f"volume {mount.name} mounts the socket file itself: a plugin restart makes "
            "a new socket the apiserver never sees",
            add_mount.replace("add a", "mount the directory instead: a"), name,
        )
    else:
        report.add(
            "manifest-socket-mount", True,
            f"{ep.path} is host {mount.host_path_of(ep.path)!s} "
            f"(volume {mount.name})",
            provider=name,
        )


def _config_flag_check(report: _Report, pod: ApiserverPod, config_path: Path) -> None:
    value = pod.flags.get(CONFIG_FLAG)
    if not value:
        report.add(
            "manifest-config-flag", False,
            f"{pod.container} has no {CONFIG_FLAG}: encryption at rest is off",
            f"add {CONFIG_FLAG}=/etc/kubernetes/enc/encryption-config.yaml to its command, with a "
            "hostPath volume and volumeMount for that directory",
        )
        return
    mount = pod.mount_for(value) if value.startswith("/") else None
    mount_fix = (
        f"add a hostPath volume and a volumeMount covering {os.path.dirname(value)} "
        f"(readOnly) to {pod.container}"
    )
    if mount is None or mount.host_path is None:
        why = "no volumeMount covers it" if mount is None else f"volume {mount.name} is not a hostPath"
        report.add(
            "manifest-config-flag", False,
            f"{CONFIG_FLAG}={value}: {why}, so the apiserver cannot read it and will not start",
            mount_fix,
        )
        return
    host = str(mount.host_path_of(value))
    if os.path.realpath(host) != os.path.realpath(config_path):
        report.add(
            "manifest-config-flag", False,
            f"{CONFIG_FLAG}={value} is host file {host}, not the "
            f"{config_path!s} checked here",
            f"run the doctor with --encryption-config {host}, or point the flag at the checked file",
        )
        return
    report.add(
        "manifest-config-flag", True,
        f"{CONFIG_FLAG}={value} is host file {host} (volume {mount.name})",
    )


def render_table(report: DoctorReport) -> str:
    """One line per check: status, name (and provider), detail, then the fix when it failed."""
    lines = [f"apiserver user: {printable(report.apiserver_user)}"]
    for c in report.checks:
        name = c.name + (f" [{c.provider}]" if c.provider else "")
        line = f"{c.status.upper():<4}  {printable(name):<34} {printable(c.detail)}"
        if c.fix:
            line += f" -- fix: {printable(c.fix)}"
        lines.append(line)
    return "\n".join(lines)
