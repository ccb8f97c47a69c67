"""``chatcore serve --pid-file PATH``: the server's process id in a file, for
``kill -HUP "$(cat PATH)"`` and service managers that want one.

The rules, as daemons have kept them since ``syslogd``: the file is checked
before the server binds anything, written once it listens (so a script that
waits for the file finds a server that answers), and removed at a clean
stop if it still names this process. A file naming a chatcore process that
is still running stops the start (two servers sharing a pid file would
have signals meant for one reach the other); a file left behind by a
server that was killed is replaced. So is a file whose process id now
belongs to some other program: after a reboot or a container restart the
kernel hands old numbers out again.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NoReturn


class PidFileError(Exception):
    """The pid file cannot be used: the message says why and what to do."""


class PidFile:
    """The pid file at ``path``: :meth:`check`, then :meth:`write`, then
    :meth:`remove`. Used by ``chatcore serve`` on the main thread."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.pid = os.getpid()
        #: Why the file found by :meth:`check` is stale (it is replaced by
        #: :meth:`write`), or None if there was none.
        self.stale: str | None = None
        self._written = False

    def check(self) -> None:
        """Refuse to start if the file names a running chatcore, or if it
        could not be written (before anything is bound, to fail early).

        :raises PidFileError: it does, or the file cannot be read or written.
        """
        folder = self.path.parent
        if not folder.is_dir():
            self._cannot_write("No such file or directory" if not folder.exists() else "Not a directory")
        if not os.access(folder, os.W_OK | os.X_OK):
            self._cannot_write("Permission denied")
        try:
            text = self.path.read_text(encoding="ascii", errors="replace")
        except FileNotFoundError:
            return
        except OSError as exc:
            raise PidFileError(
                f"--pid-file {self.path}: cannot read it: {exc.strerror}; fix its permissions or give another path"
            ) from None
        try:
            pid = int(text.strip())
        except ValueError:
            pid = 0
        if pid <= 0:
            # Whatever wrote it, it names no running server.
            self.stale = "it held no process id"
            return
        state = process_state(pid)
        if state == "chatcore":
            raise PidFileError(
                f"--pid-file {self.path}: chatcore is already running as process {pid}; "
                f"stop it first (kill {pid}), or give this server another --pid-file"
            )
        self.stale = {
            "gone": f"process {pid} is gone",
            "self": f"it named this process, {pid}, from an earlier run",
        }.get(state, f"process {pid} is not a chatcore")

    def write(self) -> None:
        """Write this process's id (a whole file or none: written beside it
        and renamed over it).

        :raises PidFileError: the directory does not exist or cannot be written.
        """
        temporary = self.path.with_name(f".{self.path.name}.{self.pid}.tmp")
        try:
            temporary.write_text(f"{self.pid}\n", encoding="ascii")
            os.replace(temporary, self.path)
        except OSError as exc:
            try:
                temporary.unlink()
            except OSError:
                pass
            self._cannot_write(exc.strerror or str(exc))
        self._written = True

    def _cannot_write(self, why: str) -> NoReturn:
        raise PidFileError(
            f"--pid-file {self.path}: cannot write it: {why}; give a path in a directory this "
            "user may write (under systemd, RuntimeDirectory=chatcore gives /run/chatcore/)"
        )

    def remove(self) -> None:
        """Remove the file if this process wrote it and it still names this
        process (another server may have replaced it since)."""
        if not self._written:
            return
        self._written = False
        try:
            if self.path.read_text(encoding="ascii", errors="replace").strip() == str(self.pid):
                self.path.unlink()
        except OSError:
            pass  # gone already, or not ours to remove


def process_state(pid: int) -> str:
    """What process ``pid`` is: ``"self"`` (this process), ``"gone"``,
    ``"chatcore"`` (running, and a chatcore) or ``"other"`` (running, and
    some other program)."""
    if pid == os.getpid():
        return "self"  # a file from an earlier life of this process id (a container's PID 1)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return "gone"
    except PermissionError:
        pass  # alive, and another user's
    except OSError:
        return "gone"
    if not Path("/proc/self").exists():
        return "chatcore"  # no /proc to ask (not Linux): alive is all that is known; the safe answer
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return "gone"  # exited since
    except OSError:
        return "chatcore"  # not ours to read: the safe answer
    # python -m chatcore serve, .../bin/chatcore serve, or its process title;
    # a zombie (exited, not yet waited for) has an empty command line.
    return "chatcore" if b"chatcore" in command else "other"
