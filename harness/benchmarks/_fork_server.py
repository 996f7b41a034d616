"""Work measured in a fresh process: its best time and the rise of its peak memory.

`ForkServer(runner)` starts `python -c` with this process's import path, which imports the
libraries once (`serve`) and then, for every request, forks a process that calls `runner` (a
"module:function" taking the request dict and returning a JSON-able dict) and answers one JSON
line. A fork of a process that has only imported (no thread pool started yet) is a fresh process
in all that matters, without paying the imports each time: one measurement's allocations, caches
and thread pools never flatter or burden the next (`bench scale` measures each stage and size so).

Memory is the rise of the process's peak RSS (VmHWM, reset through /proc/self/clear_refs, Linux
>= 4.0) over its RSS once the inputs are built and the heap's free pages handed back; numpy, torch
and faiss allocations count, child processes and GPU memory do not.
"""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Callable

DEFAULT_PRELOAD = ("numpy", "torch", "faiss", "timm", "PIL.Image")


def status_kb(field: str) -> int | None:
    """A field of /proc/self/status in kB (VmRSS, VmHWM); None where there is none."""
    try:
        with open(f"/proc/{os.getpid()}/status") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def reset_peak() -> bool:
    """Reset the peak RSS (VmHWM) to the current RSS; False where the kernel does not allow it."""
    try:
        with open(f"/proc/{os.getpid()}/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        return False
    return True


def trim() -> None:
    """Hand the heap's free pages back to the OS (glibc's malloc_trim), so that the RSS the peak
    is measured from holds the inputs, not the set-up's freed temporaries (which the work could
    otherwise reuse without its RSS rising)."""
    import ctypes

    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def time_and_peak(work: Callable[[], object], min_total_seconds: float, max_runs: int) -> dict:
    """Best time of `work` over up to `max_runs` runs while they add up to less than
    `min_total_seconds`, and the rise of the peak RSS over the RSS before the first run."""
    from harness.benchmarks import _synchronize

    gc.collect()
    trim()
    inputs_kb = status_kb("VmRSS")
    reset = reset_peak() and inputs_kb is not None
    times: list[float] = []
    while not times or (len(times) < max_runs and sum(times) < min_total_seconds):
        _synchronize()
        start = time.perf_counter()
        work()  # the result is dropped: a second run must not hold the first one's
        _synchronize()
        times.append(time.perf_counter() - start)
        gc.collect()
    peak_kb = status_kb("VmHWM")
    return {
        "seconds": min(times),
        "runs": len(times),
        "peak_mb": (peak_kb - inputs_kb) / 1024 if reset and peak_kb is not None else None,
        "inputs_mb": None if inputs_kb is None else inputs_kb / 1024,
    }


def serve(runner: str, preload: tuple[str, ...]) -> None:
    """The server: import `preload` once, then for each request line on stdin fork a process that
    answers `runner(request)` as one JSON line. Its own stdout is pointed at stderr, so nothing the
    work prints can garble the answers."""
    import importlib
    import json
    import sys
    import traceback

    answers = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    for name in preload:
        importlib.import_module(name)
    module, function = runner.split(":")
    run_one = getattr(importlib.import_module(module), function)
    # What the imports made is never garbage: out of the collector's sight, the work's
    # collections do not walk (and copy, page by page) the whole inherited heap.
    gc.collect()
    gc.freeze()
    for line in sys.stdin:
        request = json.loads(line)
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # the measuring process
            os.close(read_end)
            code = 0
            try:
                result = run_one(request)
            except BaseException:  # noqa: BLE001 - reported to the parent
                result, code = {"error": traceback.format_exc()}, 1
            with os.fdopen(write_end, "w") as out:
                out.write(json.dumps(result))
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        os.close(write_end)
        with os.fdopen(read_end) as result_pipe:
            text = result_pipe.read()
        _, status = os.waitpid(pid, 0)
        if not text:
            text = json.dumps(
                {"error": f"the measuring process ended without a result ({status=})"}
            )
        answers.write(text + "\n")
        answers.flush()


class ForkServer:
    """The parent's handle on `serve`, run as `python -c` with this process's import path."""

    def __init__(self, runner: str, preload: tuple[str, ...] = DEFAULT_PRELOAD):
        import json
        import subprocess
        import sys

        code = (
            "import json, sys; sys.path[:] = json.loads(sys.argv[1]); "
            "from harness.benchmarks._fork_server import serve; "
            "serve(sys.argv[2], tuple(json.loads(sys.argv[3])))"
        )
        self.process = subprocess.Popen(
            [sys.executable, "-c", code, json.dumps(sys.path), runner, json.dumps(preload)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def measure(self, request: dict) -> dict:
        """`runner(request)`'s answer; {"error": traceback} when it failed or the server died."""
        import json

        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        return json.loads(line) if line else {"error": "the measuring server stopped"}

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.close()
            self.process.wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if exc[0] is not None and self.process.poll() is None:
            self.process.kill()
        self.close()
        return False
