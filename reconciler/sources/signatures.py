"""Signature verification of the commits (and tags) the git source follows.

With a `SignaturePolicy`, `GitSource` checks the object its ref names after the
fetch and before the export: the commit (branch, commit SHA, remote HEAD or a
lightweight tag), or the annotated tag itself when the ref is a tag. Anything but
a good signature by a trusted key raises `UntrustedRevision`, which the daemon
rejects like an invalid revision: nothing of it is exported or applied.

GPG: the trusted keys are imported into a keyring of our own, a fresh GNUPGHOME
under the source's cache directory holding nothing else (never the user's
keyring, never a key fetched from a keyserver). SSH: git's `ssh-keygen -Y`
verification against the allowed-signers file. Either way git runs with the
user's and the system's git config switched off, and the verdict is ours, read
from git's `--raw` output (gpg status lines: GOODSIG and VALIDSIG with the
fingerprint of a trusted key; ssh-keygen: a good signature *for* a principal),
not git's exit status alone (git 2.39 accepts an SSH signature by a key no
allowed signer holds unless gpg.minTrustLevel is set).
"""

from __future__ import annotations

import enum
import logging
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from reconciler.sources.base import Revision, SourceError

__all__ = [
    "SignaturePolicy",
    "UntrustedRevision",
    "Verifier",
    "VerifyMode",
    "check_allowed_signers",
    "check_trusted_keys",
    "signature_policy",
]

log = logging.getLogger(__name__)

_TIMEOUT = 60.0
_KEYRING_PREFIX = "gnupg-"

_ISOLATED_GIT = {
    # Only what we pass with -c counts: a gpg.program or allowedSignersFile in the
    # user's or the system's git config must not decide what is trusted.
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_CONFIG_SYSTEM": os.devnull,
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_TERMINAL_PROMPT": "0",
}

_GPG_CONF = """\
# Written by reconciler: a keyring of trusted keys only.
# No agent (verification needs none) and never a key from the network.
no-autostart
no-auto-key-retrieve
"""

_IMPORTED = re.compile(r"^gpg:\s+(?:imported|unchanged):\s+([1-9]\d*)\s*$", re.MULTILINE)


def _imported_some(stderr: str) -> bool:
    """Whether gpg's import summary counts at least one key imported or unchanged."""
    return _IMPORTED.search(stderr) is not None


_PGP_BEGIN = "-----BEGIN PGP SIGNATURE-----"
_SSH_BEGIN = "-----BEGIN SSH SIGNATURE-----"
_SSH_KEY_TYPE = re.compile(r"^(ssh-|ecdsa-|sk-ssh-|sk-ecdsa-)[a-z0-9@.-]+$")
_BASE64 = re.compile(r"^[A-Za-z0-9+/]+={0,2}$")
_SSH_GOOD_FOR = re.compile(r'^Good "git" signature for (?P<who>.+?) with (?P<key>.+)$', re.M)
_SSH_GOOD_WITH = re.compile(r'^Good "git" signature with (?P<key>.+)$', re.M)
_SSH_FINGERPRINT = re.compile(r"SHA256:[A-Za-z0-9+/]+")


class VerifyMode(enum.StrEnum):
    GPG = "gpg"
    SSH = "ssh"


@dataclass(frozen=True, slots=True)
class SignaturePolicy:
    """Which signatures make a commit trusted."""

    mode: VerifyMode
    trusted_keys: tuple[Path, ...] = ()
    """GPG: armored public key files (`gpg --export --armor`)."""
    allowed_signers: Path | None = None
    """SSH: an allowed-signers file (ssh-keygen(1), ALLOWED SIGNERS)."""

    def __post_init__(self) -> None:
        if self.mode is VerifyMode.GPG and not self.trusted_keys:
            raise ValueError("--verify-commits gpg needs at least one --trusted-keys FILE")
        if self.mode is VerifyMode.SSH and self.allowed_signers is None:
            raise ValueError("--verify-commits ssh needs --allowed-signers FILE")
        if self.mode is VerifyMode.GPG and self.allowed_signers is not None:
            raise ValueError("--allowed-signers is for --verify-commits ssh, not gpg")
        if self.mode is VerifyMode.SSH and self.trusted_keys:
            raise ValueError("--trusted-keys is for --verify-commits gpg, not ssh")


def signature_policy(
    mode: str | None, trusted_keys: Sequence[Path], allowed_signers: Path | None
) -> SignaturePolicy | None:
    """The policy of the daemon's settings (None: no verification); ValueError
    for settings that do not fit together."""
    if mode is None:
        if trusted_keys or allowed_signers is not None:
            raise ValueError(
                "--trusted-keys and --allowed-signers take effect only with "
                "--verify-commits gpg|ssh"
            )
        return None
    try:
        verify_mode = VerifyMode(mode.lower())
    except ValueError:
        raise ValueError(f"--verify-commits: expected gpg or ssh, found {mode!r}") from None
    return SignaturePolicy(
        verify_mode, trusted_keys=tuple(trusted_keys), allowed_signers=allowed_signers
    )


class UntrustedRevision(SourceError):
    """The fetched commit (or tag) is not signed by a trusted key.

    Not a fetch failure: the daemon rejects `revision` as a whole, like an invalid
    one, and keeps the last good revision. `revision.path` does not exist: the tree
    of an untrusted commit is never exported.
    """

    def __init__(self, revision: Revision, reason: str) -> None:
        super().__init__(reason)
        self.revision = revision
        self.reason = reason


# ---------------------------------------------------------------------- startup checks


def check_trusted_keys(path: Path) -> list[str]:
    """The fingerprints of the public keys in `path`; ValueError saying what is wrong
    (no key, a secret key, gpg missing). Runs gpg in a throwaway home."""
    try:
        gpg = _binary("gpg", "--verify-commits gpg")
        with tempfile.TemporaryDirectory(prefix="reconciler-gpg-") as home:
            result = _run(
                [gpg, "--batch", "--no-autostart", "--with-colons", "--show-keys", str(path)],
                env={"GNUPGHOME": home},
            )
    except SourceError as error:
        raise ValueError(str(error)) from None
    records = [line.split(":") for line in result.stdout.splitlines()]
    if any(fields[0] in ("sec", "ssb") for fields in records):
        raise ValueError(
            "holds a secret key: give the public key only (gpg --export --armor KEYID)"
        )
    fingerprints = _fingerprints(result.stdout)
    if result.returncode != 0 or not fingerprints:
        raise ValueError(
            "no OpenPGP public key found in it (expected the output of gpg --export --armor)"
        )
    return fingerprints


def check_allowed_signers(path: Path) -> int:
    """The number of entries of an allowed-signers file; ValueError naming the line
    that is not `principals [options] key-type base64-key`, or saying it has none."""
    try:
        _binary("ssh-keygen", "--verify-commits ssh")
    except SourceError as error:
        raise ValueError(str(error)) from None
    text = path.read_text(encoding="utf-8")
    entries = 0
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        # options may hold quoted spaces, so look for the key type from the right
        found = [
            i
            for i in range(1, len(fields) - 1)
            if _SSH_KEY_TYPE.match(fields[i]) and _BASE64.match(fields[i + 1])
        ]
        if not found:
            shown = line.strip()[:60].encode("unicode_escape").decode("ascii")
            raise ValueError(
                f"line {number}: expected `principals [options] key-type base64-key`, "
                f"found {shown!r}"
            )
        entries += 1
    if entries == 0:
        raise ValueError("has no signer in it (lines: `principals [options] key-type base64-key`)")
    return entries


# ---------------------------------------------------------------------- verification


@dataclass(frozen=True, slots=True)
class _Keyring:
    home: Path
    fingerprints: frozenset[str]
    stamp: tuple[tuple[int, int, int, int], ...]
    """(device, inode, size, mtime) of each key file when it was read."""


class Verifier:
    """Checks signatures in a git directory against a policy. Not thread-safe: the
    git source calls it under its fetch lock."""

    def __init__(self, policy: SignaturePolicy, cache_dir: Path) -> None:
        self.policy = policy
        self.cache_dir = cache_dir
        self._keyring: _Keyring | None = None
        self._last: tuple[str, object, str | None] | None = None
        """(object id, keyring, verdict) of the last check: polls of an unchanged
        ref do not run gpg again."""

    def verify(
        self, git_dir: Path, object_id: str, *, kind: str, name: str, tag: str | None = None
    ) -> str | None:
        """Why the commit or tag `object_id` is not trusted, or None when it is.

        `kind` is "commit" or "tag"; `name` says what it is in messages; `tag`, for
        a tag, is the name its ref has: a signed tag object naming another tag
        (an old release's signed tag pushed under a new name) is not trusted.
        """
        keyring: object = self._gpg_keyring() if self.policy.mode is VerifyMode.GPG else None
        if self._last is not None and self._last[:2] == (object_id, keyring):
            return self._last[2]
        verdict = self._verify(git_dir, object_id, kind=kind, name=name, tag=tag)
        self._last = (object_id, keyring, verdict)
        return verdict

    def _verify(
        self, git_dir: Path, object_id: str, *, kind: str, name: str, tag: str | None
    ) -> str | None:
        body = self._git(git_dir, ["cat-file", kind, object_id])
        if body.returncode != 0:
            raise SourceError(f"cannot read {name}: {_last_line(body.stderr)}")
        signature = _signature_kind(body.stdout, kind)
        wanted = "GPG" if self.policy.mode is VerifyMode.GPG else "SSH"
        if signature is None:
            return f"{name} is not signed (--verify-commits {self.policy.mode})"
        if signature != wanted:
            return (
                f"{name} has an {signature} signature; --verify-commits {self.policy.mode} "
                f"accepts only {wanted} signatures"
            )
        if tag is not None:
            named = _header(body.stdout, "tag")
            if named != tag:
                return (
                    f"{name} is a signed tag object named {named!r}, not {tag!r}: "
                    "a tag re-pushed under another name is not trusted"
                )
        verb = "verify-commit" if kind == "commit" else "verify-tag"
        if self.policy.mode is VerifyMode.GPG:
            return self._verify_gpg(git_dir, object_id, verb, name)
        return self._verify_ssh(git_dir, object_id, verb, name)

    def _verify_gpg(self, git_dir: Path, object_id: str, verb: str, name: str) -> str | None:
        keyring = self._gpg_keyring()
        gpg = _binary("gpg", "--verify-commits gpg")
        result = self._git(
            git_dir,
            ["-c", f"gpg.program={gpg}", verb, "--raw", object_id],
            env={"GNUPGHOME": str(keyring.home)},
        )
        status = _gpg_status(result.stderr)
        fingerprints = {
            fpr for fields in status.get("VALIDSIG", []) for fpr in (fields[:1] + fields[-1:])
        }
        key = _gpg_key(status)
        if "BADSIG" in status:
            return f"{name} has a bad GPG signature (changed after it was signed?) by key {key}"
        if "REVKEYSIG" in status:
            return f"{name} is signed by GPG key {key}, which is revoked"
        if "EXPKEYSIG" in status:
            return f"{name} is signed by GPG key {key}, which has expired"
        if "EXPSIG" in status:
            return f"{name} has an expired GPG signature by key {key}"
        if "ERRSIG" in status or "NO_PUBKEY" in status:
            return f"{name} is signed by GPG key {key}, which is not among the trusted keys"
        trusted = fingerprints & keyring.fingerprints
        if result.returncode != 0 or "GOODSIG" not in status or not trusted:
            return (
                f"{name}: its GPG signature could not be verified by a trusted key "
                f"({_last_line(result.stderr) or f'exit status {result.returncode}'})"
            )
        log.debug("%s: good GPG signature by %s", name, ", ".join(sorted(trusted)))
        return None

    def _verify_ssh(self, git_dir: Path, object_id: str, verb: str, name: str) -> str | None:
        assert self.policy.allowed_signers is not None
        ssh_keygen = _binary("ssh-keygen", "--verify-commits ssh")
        allowed = self.policy.allowed_signers.resolve()
        if not allowed.is_file():
            raise SourceError(f"allowed signers file {self.policy.allowed_signers} is missing")
        result = self._git(
            git_dir,
            [
                "-c",
                f"gpg.ssh.program={ssh_keygen}",
                "-c",
                f"gpg.ssh.allowedSignersFile={allowed}",
                "-c",
                "gpg.minTrustLevel=fully",  # git alone would accept an unknown key
                verb,
                "--raw",
                object_id,
            ],
        )
        output = result.stderr + result.stdout
        good = _SSH_GOOD_FOR.search(output)
        if result.returncode == 0 and good is not None:
            log.debug("%s: good SSH signature for %s", name, good.group("who"))
            return None
        key = _SSH_FINGERPRINT.search(output)
        unknown = _SSH_GOOD_WITH.search(output)
        if unknown is not None or "No principal matched" in output:
            which = f"SSH key {key.group(0)}" if key else "an SSH key"
            return (
                f"{name} is signed by {which}, which is not in the allowed signers "
                f"file {self.policy.allowed_signers}"
            )
        return (
            f"{name}: its SSH signature is not valid for any allowed signer "
            f"({_last_line(output) or f'exit status {result.returncode}'})"
        )

    # ------------------------------------------------------------------ the keyring

    def _gpg_keyring(self) -> _Keyring:
        """The keyring of the trusted keys, built again when a key file changed."""
        stamp = tuple(_stamp(path) for path in self.policy.trusted_keys)
        if self._keyring is not None and self._keyring.stamp == stamp:
            return self._keyring
        self._keyring = self._build_keyring(stamp)
        return self._keyring

    def _build_keyring(self, stamp: tuple[tuple[int, int, int, int], ...]) -> _Keyring:
        gpg = _binary("gpg", "--verify-commits gpg")
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        # Earlier keyrings (ours, or a crashed run's) go: only one is ever used.
        for old in self.cache_dir.glob(f"{_KEYRING_PREFIX}*"):
            shutil.rmtree(old, ignore_errors=True)
        home = Path(tempfile.mkdtemp(prefix=_KEYRING_PREFIX, dir=self.cache_dir))  # 0700
        try:
            (home / "gpg.conf").write_text(_GPG_CONF)
            for path in self.policy.trusted_keys:
                # The same check as at start-up: a file changed since must still hold
                # public keys only.
                try:
                    check_trusted_keys(path)
                except (OSError, ValueError) as error:
                    reason = error.strerror if isinstance(error, OSError) else str(error)
                    raise SourceError(f"trusted keys file {path}: {reason}") from None
                result = _run(
                    [gpg, "--batch", "--no-autostart", "--import", str(path)],
                    env={"GNUPGHOME": str(home)},
                )
                # gpg may exit non-zero for side issues (a trustdb or agent note) after
                # importing: what counts is that a key was imported from this file.
                if result.returncode != 0 and not _imported_some(result.stderr):
                    raise SourceError(
                        f"trusted keys file {path}: gpg --import failed: "
                        f"{_last_line(result.stderr)}"
                    )
            listed = _run(
                [gpg, "--batch", "--no-autostart", "--with-colons", "--list-keys"],
                env={"GNUPGHOME": str(home)},
            )
        except BaseException:
            shutil.rmtree(home, ignore_errors=True)
            raise
        fingerprints = frozenset(_fingerprints(listed.stdout))
        log.info(
            "commit signatures: %d trusted GPG key(s) from %d file(s)",
            len(fingerprints),
            len(self.policy.trusted_keys),
        )
        return _Keyring(home=home, fingerprints=fingerprints, stamp=stamp)

    # ------------------------------------------------------------------ running git

    def _git(
        self, git_dir: Path, args: Sequence[str], env: Mapping[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return _run(["git", *args], env={"GIT_DIR": str(git_dir), **_ISOLATED_GIT, **(env or {})})


# ---------------------------------------------------------------------- helpers


def _run(argv: list[str], env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            argv,
            env={**os.environ, **env},
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise SourceError(f"{Path(argv[0]).name} timed out after {_TIMEOUT:g} s") from None
    except OSError as error:
        raise SourceError(f"cannot run {argv[0]}: {error.strerror}") from None


def _binary(name: str, needed_by: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise SourceError(f"{name} is not installed (or not on PATH): {needed_by} needs it")
    return found


def _stamp(path: Path) -> tuple[int, int, int, int]:
    try:
        info = path.stat()
    except OSError as error:
        raise SourceError(f"trusted keys file {path}: {error.strerror}") from None
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)


def _fingerprints(colons: str) -> list[str]:
    """Fingerprints of every key and subkey in `gpg --with-colons` output."""
    fingerprints = []
    for line in colons.splitlines():
        fields = line.split(":")
        if fields[0] == "fpr" and len(fields) > 9 and fields[9]:
            fingerprints.append(fields[9].upper())
    return fingerprints


def _gpg_status(stderr: str) -> dict[str, list[list[str]]]:
    """`[GNUPG:] KEYWORD args` lines by keyword."""
    status: dict[str, list[list[str]]] = {}
    for line in stderr.splitlines():
        if line.startswith("[GNUPG:] "):
            keyword, *args = line.removeprefix("[GNUPG:] ").split(" ")
            status.setdefault(keyword, []).append(args)
    return status


def _gpg_key(status: Mapping[str, list[list[str]]]) -> str:
    """The fingerprint (or long key id) a signature names, for messages."""
    for keyword in ("VALIDSIG", "ERRSIG"):
        for args in status.get(keyword, []):
            if args and re.fullmatch(r"[0-9A-F]{40}", args[-1]):
                return args[-1]
    for keyword in ("BADSIG", "GOODSIG", "EXPKEYSIG", "REVKEYSIG", "EXPSIG", "NO_PUBKEY"):
        for args in status.get(keyword, []):
            if args:
                return args[0]
    return "(unknown)"


def _signature_kind(body: str, kind: str) -> str | None:
    """ "GPG", "SSH" or None: the signature a commit's gpgsig header or a tag's
    trailing block holds."""
    if kind == "commit":
        head = body.partition("\n\n")[0]
        signature = None
        for line in head.splitlines():
            if line.startswith(("gpgsig ", "gpgsig-sha256 ")):
                signature = line.partition(" ")[2]
                break
        if signature is None:
            return None
    else:
        begins = [body.rfind(_PGP_BEGIN), body.rfind(_SSH_BEGIN)]
        if max(begins) < 0:
            return None
        signature = body[max(begins) :]
    if signature.startswith(_PGP_BEGIN):
        return "GPG"
    if signature.startswith(_SSH_BEGIN):
        return "SSH"
    return "unknown"


def _header(body: str, name: str) -> str | None:
    for line in body.partition("\n\n")[0].splitlines():
        if line.startswith(f"{name} "):
            return line.removeprefix(f"{name} ")
    return None


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    lines = [line for line in lines if not line.startswith("[GNUPG:]")] or lines
    return lines[-1][:300] if lines else ""
