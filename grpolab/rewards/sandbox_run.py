"""One sandbox run as this process sees it (`grpolab.rewards.sandbox` prepares it and makes the result).

This module owns the processes and files of a run: it starts the checker and then the candidate
(`grpolab.rewards.sandbox_harness`) with the pipes between them, waits for the checker's verdict with a
wall-clock deadline and, without bwrap, the disk watchdog; then it kills every process of the run (each
wait bounded), reads stdout and stderr through its own descriptors and removes the work folder whatever is
in it. It never opens a path inside the work folder: what the candidate leaves there (FIFOs, sockets,
links, folders chmod 000) can neither block nor redirect it. What the watchdog counts, and what it misses,
is in `sandbox`'s docstring.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import select
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from grpolab.rewards import sandbox_harness as harness

if TYPE_CHECKING:
    from grpolab.rewards.sandbox import SandboxLimits

MB = 1024 * 1024
SHARED_TMP = ("/tmp", "/var/tmp", "/dev/shm")  # world-writable: where a uid may leave files outside its folder
POLL_SECONDS = 0.05
OPEN_FILES_EVERY = 20  # polls between scans of the files its processes hold open (a scan of /proc: costlier)
MAX_ANSWER = 1 * MB  # bytes of one answer from the candidate
MAX_VERDICT = 64 * 1024
RMTREE_HOOK = "onexc" if sys.version_info >= (3, 12) else "onerror"


@lru_cache(maxsize=2)
def harness_command(python: str, entry: str) -> tuple[str, ...]:
    """`python -I -S -B -c` with the harness module's source and a call of `entry`."""
    source = Path(harness.__file__).read_text(encoding="utf-8")
    return (python, "-I", "-S", "-B", "-c", f"{source}\n{entry}()\n")


def remove_tree(path: str) -> None:
    """Remove a work folder whatever the program left there: FIFOs and sockets are unlinked (never opened),
    folders it made unreadable are opened up and removed. Never raises."""
    retried: set[str] = set()

    def retry(function, failed, _error):
        if failed in retried:
            return
        retried.add(failed)
        with contextlib.suppress(OSError):
            os.chmod(os.path.dirname(failed), 0o700)
            if stat.S_ISDIR(os.lstat(failed).st_mode):
                os.chmod(failed, 0o700)
                shutil.rmtree(failed, **{RMTREE_HOOK: retry})
            else:
                os.unlink(failed)

    try:
        if not stat.S_ISDIR(os.lstat(path).st_mode):  # rmtree would open a FIFO put in the folder's place
            os.unlink(path)
            return
    except OSError:
        return
    with contextlib.suppress(OSError):
        shutil.rmtree(path, **{RMTREE_HOOK: retry})
    if os.path.lexists(path):
        shutil.rmtree(path, ignore_errors=True)


def owned_entries(uid: int) -> list[str]:
    """What `uid` made directly in the world-writable folders (all it can make there, by the sticky bit)."""
    found = []
    for folder in SHARED_TMP:
        with contextlib.suppress(OSError), os.scandir(folder) as entries:
            for entry in entries:
                with contextlib.suppress(OSError):
                    if entry.stat(follow_symlinks=False).st_uid == uid:
                        found.append(entry.path)
    return found


def kill_uid(uid: int | None) -> None:
    """Kill every process of the sandbox's uid: a shell running as that uid signals -1, which reaches all
    processes of its uid (and nothing else). A few passes: a process may fork while a pass runs."""
    if uid is None:
        return
    for _ in range(3):
        with contextlib.suppress(subprocess.TimeoutExpired):
            subprocess.run(
                ["/bin/sh", "-c", "kill -9 -1"],
                user=uid,
                group=uid,
                extra_groups=[],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env={},
                timeout=5,
            )
        time.sleep(0.01)
    deadline = time.monotonic() + 5.0  # a killed process that held much memory takes a moment to exit
    while living_processes(uid) and time.monotonic() < deadline:
        time.sleep(0.02)


def living_processes(uid: int) -> list[int]:
    """Process ids of `uid` that are not yet dead (zombies are dead: only their exit status is left)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            status = Path(f"/proc/{entry}/status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if int(fields.get("Uid", "-1").split()[0]) == uid and not fields.get("State", "").strip().startswith(
            ("Z", "X")
        ):
            found.append(int(entry))
    return found


class DiskWatch:
    """The watchdog without bwrap (module docstring: what it counts, its overshoot). `over()` says why the
    run must stop, or ''. Sizes count the larger of apparent and allocated size, never less than written."""

    def __init__(self, work: str, uid: int | None, limits: SandboxLimits, exempt: list[int]):
        self.work, self.uid, self.limits = work, uid, limits
        self.exempt = {(info.st_dev, info.st_ino) for info in map(os.fstat, exempt)}  # stdout/stderr
        self.polls = 0

    def over(self) -> str:
        roots = [self.work, *(owned_entries(self.uid) if self.uid is not None else [])]
        used, count, seen = 0, 0, set(self.exempt)
        stack = list(roots)
        while stack and count <= self.limits.max_files:
            path = stack.pop()
            try:
                info = os.lstat(path)
            except OSError:
                continue  # removed while we looked
            count += 1
            if (info.st_dev, info.st_ino) not in seen:
                seen.add((info.st_dev, info.st_ino))
                used += max(info.st_size, info.st_blocks * 512)
            if stat.S_ISDIR(info.st_mode):
                with contextlib.suppress(OSError):
                    stack.extend(os.path.join(path, name) for name in os.listdir(path))
        self.polls += 1
        if self.uid is not None and self.polls % OPEN_FILES_EVERY == 0:
            used += self.held_open(seen)
        if count > self.limits.max_files:
            return f"grpolab sandbox: more than {self.limits.max_files} files; stopped"
        if used > self.limits.disk_mb * MB:
            return f"grpolab sandbox: over its disk quota of {self.limits.disk_mb} MB; stopped"
        return ""

    def held_open(self, seen: set) -> int:
        """Bytes of regular files the uid's processes hold open that the folder scan did not see (unlinked)."""
        used = 0
        for pid in living_processes(self.uid):
            with contextlib.suppress(OSError):
                for fd in os.listdir(f"/proc/{pid}/fd"):
                    with contextlib.suppress(OSError):
                        info = os.stat(f"/proc/{pid}/fd/{fd}")  # the file itself; opens nothing
                        if stat.S_ISREG(info.st_mode) and (info.st_dev, info.st_ino) not in seen:
                            seen.add((info.st_dev, info.st_ino))
                            used += max(info.st_size, info.st_blocks * 512)
        return used


def tail(file, limit: int = 2000) -> str:
    """The end of one of this process's own files, by its descriptor (never a path the sandbox can touch)."""
    try:
        size = os.fstat(file.fileno()).st_size
        return os.pread(file.fileno(), limit, max(0, size - limit)).decode(errors="replace")
    except OSError:
        return ""


@dataclass
class Outcome:
    how: str  # "verdict" (the checker wrote and closed its pipe), "timeout", or why the watchdog stopped it
    verdict: dict | None  # the checker's verdict when well formed and for this run
    stdout: str
    stderr: str
    checker_output: str
    seconds: float


class SandboxRun:
    """One run: the checker and the candidate, the pipes between them and this process's files."""

    def __init__(self, limits: SandboxLimits, mode: str, uid: int | None, work: str):
        self.limits, self.mode, self.uid, self.work = limits, mode, uid, work
        self.nonce = secrets.token_hex(16)
        self.processes: list[subprocess.Popen] = []
        self.files: list = []  # candidate stdout, stderr, checker output: unlinked, outside the work folder
        self.fds: list[int] = []

    def run(self, python: str, prefix: list[str], candidate: dict, checker: dict, total: int) -> Outcome:
        """Run `candidate` (its spec, under the command `prefix`) against the checker's; never waits past
        the time limit (plus the bounded kill)."""
        self.files = [tempfile.TemporaryFile() for _ in range(3)]  # noqa: SIM115 (closed by close())
        start = time.perf_counter()
        try:
            verdict_fd = self.start(python, prefix, candidate, checker)
            how, data = self.wait(verdict_fd)
        finally:
            self.stop()
        verdict = parse_verdict(data, self.nonce, total) if how == "verdict" else None
        stdout, stderr, checker_output = (tail(file) for file in self.files)
        return Outcome(how, verdict, stdout, stderr, checker_output, time.perf_counter() - start)

    def pipe(self) -> tuple[int, int]:
        read, write = os.pipe()
        self.fds += [read, write]
        return read, write

    def start(self, python: str, prefix: list[str], candidate: dict, checker: dict) -> int:
        """Start the checker, then the candidate; returns the fd the verdict comes on."""
        requests, to_candidate = self.pipe()
        from_candidate, answers = self.pipe()
        verdict, to_us = self.pipe()
        candidate = {**candidate, "answers": answers}
        checker = {**checker, "nonce": self.nonce, "candidate": candidate, "max_answer": MAX_ANSWER}
        checker |= {"requests": to_candidate, "answers": from_candidate, "verdict": to_us}
        with tempfile.TemporaryFile() as spec:  # a file, not a pipe: writing it never waits on the checker
            spec.write(harness.pack(checker))
            spec.seek(0)
            self.processes.append(
                subprocess.Popen(
                    harness_command(python, "checker_main"),
                    stdin=spec,
                    stdout=self.files[2],
                    stderr=subprocess.STDOUT,
                    pass_fds=(to_candidate, from_candidate, to_us),
                    cwd="/",
                    env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
                    start_new_session=True,
                )
            )
        self.processes.append(
            subprocess.Popen(
                [*prefix, *harness_command(python, "candidate_main")],
                stdin=requests,
                stdout=self.files[0],
                stderr=self.files[1],
                pass_fds=(answers,),
                cwd=self.work,
                env={"PATH": "/usr/bin:/bin", "HOME": self.work, "TMPDIR": self.work, "LANG": "C.UTF-8"},
                start_new_session=True,
            )
        )
        for fd in (requests, to_candidate, from_candidate, answers, to_us):  # the children hold them now
            self.close_fd(fd)
        return verdict

    def wait(self, verdict: int) -> tuple[str, bytes]:
        """('verdict', bytes) once the checker has written and closed its pipe; else ('timeout' | why the
        watchdog stopped it, b''). Returns by the wall-clock limit whatever the processes do."""
        deadline = time.monotonic() + self.limits.timeout_seconds
        watch = DiskWatch(self.work, self.uid, self.limits, [f.fileno() for f in self.files[:2]])
        poller = select.poll()  # not select(): a training process may hold more than 1024 descriptors
        poller.register(verdict, select.POLLIN)
        data = bytearray()
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return "timeout", b""
            if poller.poll(max(1, int(min(left, POLL_SECONDS) * 1000))):
                chunk = os.read(verdict, 1 << 16)
                if not chunk:
                    return "verdict", bytes(data)
                data += chunk
                if len(data) > MAX_VERDICT:
                    return "verdict", b""
            reason = watch.over() if self.mode == "limits" else ""
            if reason:
                return reason, b""

    def stop(self) -> None:
        """Kill both processes (and every process of the sandbox uid); each wait is bounded."""
        for process in self.processes:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
        kill_uid(self.uid)
        for process in self.processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=5)

    def close_fd(self, fd: int) -> None:
        if fd in self.fds:
            self.fds.remove(fd)
            os.close(fd)

    def close(self) -> None:
        """Close this run's descriptors and files, remove its folder and, as root without bwrap, what its
        uid left in the world-writable folders (only ctypes gets there, around the audit hook)."""
        for fd in list(self.fds):
            self.close_fd(fd)
        for file in self.files:
            file.close()
        if self.mode == "limits" and self.uid is not None:
            for path in owned_entries(self.uid):
                with contextlib.suppress(OSError):
                    if stat.S_ISDIR(os.lstat(path).st_mode):
                        remove_tree(path)
                    else:
                        os.unlink(path)
        remove_tree(os.path.dirname(self.work))  # `make_work_dir`'s outer folder


def parse_verdict(data: bytes, nonce: str, total: int) -> dict | None:
    """The checker's one frame, or None when it is not exactly one well-formed verdict for this run."""
    if len(data) < harness.HEADER.size or harness.HEADER.unpack(data[: harness.HEADER.size])[0] != len(data) - 4:
        return None
    try:
        verdict = json.loads(data[harness.HEADER.size :])
    except ValueError:
        return None
    if not isinstance(verdict, dict) or verdict.get("nonce") != nonce or verdict.get("state") not in ("ran", "error"):
        return None
    passed = verdict.get("passed")
    if type(passed) is not int or not 0 <= passed <= total:
        return None
    return verdict
