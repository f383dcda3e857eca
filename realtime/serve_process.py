"""``stableface serve`` in a child process on 127.0.0.1 and a free port: for benchmarks, tests and
scripts that need a real server process beside them."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from engines.errors import StableFaceError

URL_PATTERN = re.compile(r"(http://127\.0\.0\.1:\d+/)")
RSS_PATTERN = re.compile(r"^VmRSS:\s+(\d+) kB", re.M)


def _children(pid: int) -> list[int]:
    children: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children += [int(child) for child in (task / "children").read_text().split()]
        except OSError:  # the thread has ended
            continue
    return children


def process_tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants (a server and its render workers),
    in MiB, from Linux's ``/proc`` (nan where the process is gone)."""
    total_kb, found, pending = 0, False, [pid]
    while pending:
        current = pending.pop()
        try:
            match = RSS_PATTERN.search(Path(f"/proc/{current}/status").read_text())
        except OSError:  # it has just exited
            continue
        found = True
        total_kb += int(match.group(1)) if match else 0
        pending += _children(current)
    return total_kb / 1024 if found else float("nan")


@dataclass
class ServeProcess:
    """A running server: its URL, the child process and the file its log (stderr) goes to."""

    url: str
    process: subprocess.Popen[str]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text()


@contextmanager
def serve_in_process(
    arguments: Sequence[str], log_path: Path | None = None, verbose: bool = False, stop_timeout_s: float = 20
) -> Iterator[ServeProcess]:
    """Start ``stableface [-v] serve ARGUMENTS --port 0``, yield it once it prints its URL, and stop it
    with SIGINT (as Ctrl-C would) on exit, killing it after ``stop_timeout_s``.

    Args:
        arguments: ``serve`` options (``--avatar``, ``--backend``, ...).
        log_path: where its log goes (default: a temporary file, removed afterwards).
        verbose: log at INFO level (``-v``).
        stop_timeout_s: how long a stopping server may take before it is killed.

    Raises:
        StableFaceError: the server did not start (with the end of its log).
    """
    with tempfile.TemporaryDirectory() as scratch:
        path = log_path or Path(scratch) / "serve.log"
        command = [sys.executable, "-m", "stableface", *(["-v"] if verbose else []), "serve", *arguments]
        command += ["--port", "0"]
        with path.open("w") as log:
            process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, text=True)
        try:
            assert process.stdout is not None
            match = URL_PATTERN.search(process.stdout.readline())
            if not match:
                process.wait(stop_timeout_s)
                raise StableFaceError(f"stableface serve did not start: {path.read_text()[-1500:]}")
            yield ServeProcess(match.group(1), process, path)
        finally:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(stop_timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
