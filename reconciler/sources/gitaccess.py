"""How the git source runs git: the environment that carries credentials to it (an
ssh command with the key and known_hosts, an HTTP Authorization header), running one
git command with a timeout and a short reason on failure, and scrubbing every
credential from messages.

Credentials come from files and reach git only through the environment of its
subprocess (GIT_SSH_COMMAND, GIT_CONFIG_* for an HTTP header), so they never appear
in argv, in the cached repository's config, in logs or in errors. `GitAccess` is the
base of the git source (git.py) and of the remote bundles' exports (bundles.py),
which extend `_network_env`.
"""

from __future__ import annotations

import base64
import os
import shlex
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import IO
from urllib.parse import unquote, urlsplit, urlunsplit

import git

from reconciler.sources.base import SourceError, redact

# Lines git (or ssh) prints around the real reason of a failure; they say nothing.
_BOILERPLATE = (
    "fatal: could not read from remote repository",
    "please make sure you have the correct access rights",
    "and the repository exists",
    "hint:",
)


class _GitFailure(Exception):
    """A git command failed. The message is concise and not yet scrubbed."""


class GitAccess:
    """Running git with the credentials of one remote; the git source's settings
    (set by `GitSource.__init__`) are declared here."""

    url: str
    """The remote's URL as shown (redacted)."""
    timeout: float
    ssh_key: Path | None
    known_hosts: Path | None
    insecure_ignore_host_key: bool
    token_file: Path | None
    _basic_credentials: str | None
    """"user:password" taken out of an http(s) URL, sent as a header instead."""

    def _run(
        self,
        cmd: git.Git,
        op: str,
        args: list[str],
        *,
        env: Mapping[str, str] | None = None,
        output: IO[bytes] | None = None,
        what: str | None = None,
    ) -> str:
        """Run git; return stdout; raise _GitFailure with a short reason.

        `env` (credentials) is given only to commands that talk to the remote; those
        also get the timeout.
        """
        executable = git.Git.GIT_PYTHON_GIT_EXECUTABLE or "git"
        network = env is not None
        try:
            status, stdout, stderr = cmd.execute(
                [str(executable), *args],
                with_extended_output=True,
                with_exceptions=False,
                env=env,
                kill_after_timeout=self.timeout if network else None,
                output_stream=output,
            )
        except git.exc.GitCommandNotFound:
            raise _GitFailure(f"git {op} failed: the git executable was not found") from None
        if status == 0:
            return stdout if isinstance(stdout, str) else ""
        subject = f" of {what}" if what else ""
        source = f" from {self.url}" if network else ""
        if str(stderr).startswith("Timeout:"):
            reason = f"timed out after {self.timeout:g} s"
        else:
            reason = _stderr_reason(str(stderr)) or f"exit status {status}"
        raise _GitFailure(f"git {op}{subject}{source} failed: {reason}")

    def _network_env(self) -> dict[str, str]:
        """Environment for git commands that reach the remote (read at each fetch)."""
        env = {
            "GIT_TERMINAL_PROMPT": "0",
            # Any prompt gets an empty answer instead of blocking on a terminal.
            "GIT_ASKPASS": shutil.which("true") or "/bin/true",
            "SSH_ASKPASS": shutil.which("true") or "/bin/true",
            "GCM_INTERACTIVE": "never",
            "GIT_SSH_COMMAND": self._ssh_command(),
        }
        header = self._auth_header()
        if header is not None:
            # Appended after any GIT_CONFIG_* the operator already set.
            try:
                index = int(os.environ.get("GIT_CONFIG_COUNT", "0"))
            except ValueError:
                index = 0
            env["GIT_CONFIG_COUNT"] = str(index + 1)
            env[f"GIT_CONFIG_KEY_{index}"] = "http.extraHeader"
            env[f"GIT_CONFIG_VALUE_{index}"] = header
        return env

    def _ssh_command(self) -> str:
        argv = ["ssh", "-o", "BatchMode=yes", "-o", f"ConnectTimeout={max(1, int(self.timeout))}"]
        if self.ssh_key is not None:
            if not self.ssh_key.is_file():
                raise SourceError(f"ssh key file {self.ssh_key} does not exist")
            argv += ["-i", str(self.ssh_key), "-o", "IdentitiesOnly=yes"]
        if self.insecure_ignore_host_key:
            argv += [
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "LogLevel=ERROR",
            ]
        else:
            argv += ["-o", "StrictHostKeyChecking=yes"]
            if self.known_hosts is not None:
                if not self.known_hosts.is_file():
                    raise SourceError(f"known_hosts file {self.known_hosts} does not exist")
                argv += ["-o", f"UserKnownHostsFile={self.known_hosts}"]
        return " ".join(shlex.quote(arg) for arg in argv)

    def _auth_header(self) -> str | None:
        if self.token_file is not None:
            try:
                token = self.token_file.read_text().strip()
            except OSError as error:
                raise SourceError(
                    f"cannot read token file {self.token_file}: {error.strerror}"
                ) from None
            if not token:
                raise SourceError(f"token file {self.token_file} is empty")
            return f"Authorization: Bearer {token}"
        if self._basic_credentials is not None:
            encoded = base64.b64encode(self._basic_credentials.encode()).decode()
            return f"Authorization: Basic {encoded}"
        return None

    def _scrub(self, message: str, env: Mapping[str, str]) -> str:
        """redact() plus removal of any credential we hold, wherever it turned up."""
        secrets: list[str] = []
        for key, value in env.items():
            if key.startswith("GIT_CONFIG_VALUE_") and value.startswith("Authorization:"):
                secrets.append(value.split(" ", 2)[-1])
        if self._basic_credentials is not None:
            secrets += [self._basic_credentials, *self._basic_credentials.split(":", 1)[1:]]
        message = redact(message)
        for secret in secrets:
            if len(secret) >= 4:
                message = message.replace(secret, "***")
        return message


def _split_credentials(url: str) -> tuple[str, str | None]:
    """For http(s) URLs with user:password@, the URL without them and "user:password".

    The credentials then travel as an HTTP header in the environment instead of in
    argv and in the cached repository's config.
    """
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https") or parts.password is None:
        return url, None
    host = parts.netloc.rpartition("@")[2]
    clean = urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))
    return clean, f"{unquote(parts.username or '')}:{unquote(parts.password)}"


def _stderr_reason(stderr: str) -> str:
    """The part of git's stderr that says why: its last fatal/error line and the
    detail lines after it (or just the last line), without the boilerplate."""
    lines = [line.strip() for line in stderr.replace("\r", "\n").splitlines()]
    lines = [line for line in lines if line]
    useful = [line for line in lines if not line.lower().startswith(_BOILERPLATE)] or lines
    starts = [i for i, line in enumerate(useful) if line.startswith(("fatal:", "error:"))]
    reason = " ".join(useful[starts[-1] :]) if starts else (useful[-1] if useful else "")
    return reason[:300]
