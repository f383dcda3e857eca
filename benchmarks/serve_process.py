"""``stableface serve`` in its own process on 127.0.0.1 and a free port, for benchmarks."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

STOP_TIMEOUT_S = 20


@contextmanager
def serve_process(
    avatar: Path, backend: str, chunk: int | None, allowance_ms: float | None = None, name: str = "bench"
) -> Iterator[str]:
    """Start the server, yield its URL, stop it with SIGINT (as Ctrl-C would).

    Raises:
        RuntimeError: the server did not start (with the end of its log).
    """
    command = [sys.executable, "-m", "stableface", "serve", "--avatar", f"{name}={avatar}", "--port", "0"]
    command += ["--backend", backend] + (["--chunk", str(chunk)] if chunk else [])
    command += ["--compute-allowance-ms", str(allowance_ms)] if allowance_ms is not None else []
    with tempfile.TemporaryFile("w+") as log:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, text=True)
        try:
            assert process.stdout is not None
            line = process.stdout.readline()
            match = re.search(r"(http://127\.0\.0\.1:\d+/)", line)
            if not match:
                process.wait(STOP_TIMEOUT_S)
                log.seek(0)
                raise RuntimeError(f"stableface serve did not start: {log.read()[-1500:]}")
            yield match.group(1)
        finally:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
