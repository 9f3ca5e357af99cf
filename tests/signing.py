"""Real signing identities for tests: GPG keys made by gpg in their own GNUPGHOME,
SSH keys made by ssh-keygen, and commits and tags signed with them by git.

A `Signer` knows the git settings (-c) and environment that make `git commit -S`
and `git tag -s` sign with it. `Keys` makes signers under one directory and, on
close, stops the gpg-agents their keyrings started.
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

from tests.gitservers import WorkClone, run_git
from tests.system import ensure_debian


@dataclass(frozen=True)
class Signer:
    name: str
    config: tuple[str, ...]
    """git -c arguments that select this key."""
    env: Mapping[str, str]
    public: Path
    """GPG: the armored public key file; SSH: the public key file (one line)."""
    fingerprint: str
    home: Path | None = None
    """GPG: the GNUPGHOME holding the secret key."""

    def allowed_signers_line(self, principal: str, options: str = "") -> str:
        """SSH only: this key's line of an allowed-signers file."""
        key = " ".join(self.public.read_text().split()[:2])
        return f"{principal} {options + ' ' if options else ''}{key}\n"

    def gpg(self, *args: str) -> str:
        """GPG only: run gpg on this signer's home; stdout."""
        assert self.home is not None
        result = subprocess.run(
            ["gpg", "--batch", "--yes", "--homedir", str(self.home), *args],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if result.returncode != 0:
            raise RuntimeError(f"gpg {' '.join(args)} failed:\n{result.stderr}")
        return result.stdout


@dataclass
class Keys:
    """Makes signing identities under `root`; `close()` stops their gpg-agents."""

    root: Path
    _homes: list[Path] = field(default_factory=list)

    def gpg(self, name: str, *, expire: str = "never", faked_time: int | None = None) -> Signer:
        """A new ed25519 signing key `name <name@example.test>`. With `faked_time`
        (unix seconds) gpg believes it is that moment: when the key is made and
        whenever it signs (through a gpg.program wrapper)."""
        gpg = ensure_debian("gpg", "gnupg")
        home = self.root / f"gnupg-{name}"
        home.mkdir(parents=True, mode=0o700)
        self._homes.append(home)
        fake = [f"--faked-system-time={faked_time}!"] if faked_time is not None else []
        uid = f"{name} <{name}@example.test>"
        generate = ["--passphrase", "", "--quick-generate-key", uid, "ed25519", "sign", expire]
        subprocess.run(
            [gpg, "--batch", "--homedir", str(home), *fake, *generate],
            check=True,
            capture_output=True,
            timeout=60,
        )
        listing = subprocess.run(
            [gpg, "--batch", "--homedir", str(home), *fake, "--with-colons", "--list-keys"],
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout
        fingerprint = next(
            line.split(":")[9] for line in listing.splitlines() if line[:4] == "fpr:"
        )
        public = self.root / f"{name}.asc"
        public.write_bytes(
            subprocess.run(
                [gpg, "--batch", "--homedir", str(home), "--armor", "--export", fingerprint],
                check=True,
                capture_output=True,
                timeout=60,
            ).stdout
        )
        program = gpg
        if faked_time is not None:
            wrapper = self.root / f"gpg-{name}"
            wrapper.write_text(f'#!/bin/sh\nexec {gpg} --faked-system-time={faked_time}! "$@"\n')
            wrapper.chmod(0o755)
            program = str(wrapper)
        config = ("-c", "gpg.format=openpgp", "-c", f"gpg.program={program}")
        config += ("-c", f"user.signingkey={fingerprint}")
        return Signer(
            name=name,
            config=config,
            env={"GNUPGHOME": str(home)},
            public=public,
            fingerprint=fingerprint,
            home=home,
        )

    def ssh(self, name: str) -> Signer:
        """A new ed25519 SSH key."""
        keygen = ensure_debian("ssh-keygen", "openssh-client")
        key = self.root / f"ssh-{name}"
        key.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [keygen, "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(key)],
            check=True,
            capture_output=True,
            timeout=60,
        )
        fingerprint = subprocess.run(
            [keygen, "-l", "-f", f"{key}.pub"], check=True, capture_output=True, text=True
        ).stdout.split()[1]
        return Signer(
            name=name,
            config=("-c", "gpg.format=ssh", "-c", f"user.signingkey={key}"),
            env={},
            public=Path(f"{key}.pub"),
            fingerprint=fingerprint,
        )

    def revoke(self, signer: Signer) -> None:
        """Import the revocation certificate gpg made with the key, and export the
        (now revoked) public key again to `signer.public`."""
        assert signer.home is not None
        certificate = signer.home / "openpgp-revocs.d" / f"{signer.fingerprint}.rev"
        # gpg guards the certificate with a ':' before its armor line
        text = certificate.read_text().replace(":-----BEGIN", "-----BEGIN")
        unguarded = self.root / f"{signer.name}.rev"
        unguarded.write_text(text)
        signer.gpg("--import", str(unguarded))
        signer.public.write_text(signer.gpg("--armor", "--export", signer.fingerprint))

    def close(self) -> None:
        for home in self._homes:
            subprocess.run(
                ["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"],
                capture_output=True,
                timeout=30,
                check=False,
            )

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def commit(
    work: WorkClone,
    message: str,
    files: Mapping[str, str | None] | None = None,
    *,
    signer: Signer | None = None,
) -> str:
    """Write `files` and commit them, signed by `signer` (unsigned without one);
    the new commit's SHA. Nothing is pushed."""
    if files:
        work.write(files)
    work.git("add", "-A")
    if signer is None:
        work.git("commit", "-q", "--allow-empty", "-m", message)
    else:
        run_git(
            *signer.config,
            "commit",
            "-q",
            "-S",
            "--allow-empty",
            "-m",
            message,
            cwd=work.path,
            env={**work.env, **signer.env},
        )
    return work.rev()


def tag(work: WorkClone, name: str, *, signer: Signer | None, annotated: bool = True) -> str:
    """Tag HEAD: signed by `signer`, annotated unsigned, or (annotated=False)
    lightweight; force-pushed. The tag's object id."""
    if signer is not None:
        run_git(
            *signer.config,
            "tag",
            "-f",
            "-s",
            "-m",
            f"release {name}",
            name,
            cwd=work.path,
            env={**work.env, **signer.env},
        )
    elif annotated:
        work.git("tag", "-f", "-a", "-m", f"release {name}", name)
    else:
        work.git("tag", "-f", name)
    work.git("push", "-q", "--force", "origin", f"refs/tags/{name}")
    return work.git("rev-parse", f"refs/tags/{name}")
