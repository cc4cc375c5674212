"""Run model-written Python in a sandbox. Model-written code is hostile until proven otherwise.

`run_python(program, tests, limits)` runs `program` and then each test snippet in a fresh interpreter
(`python -I -S -B`: no site-packages, no user paths, no bytecode written) and reports how many tests
passed. A test passes only when it runs to its end without raising; an exit code of 0 alone counts for
nothing, so `sys.exit(0)` / `os._exit(0)` in the program score 0.

Layers, strongest first (what this machine offers is detected once, `isolation()` says which):

1. **bubblewrap** (`bwrap`, Debian package `bubblewrap`) with every namespace unshared: no network (a
   private network namespace with only a down loopback), a read-only view of `/`, a private `/tmp` and
   `/dev`, its own `/proc` and PID namespace (killing the sandbox kills every process it started), the
   home folders (`/root`, `/home`) hidden behind empty tmpfs (the interpreter's own install is bound back
   read-only when it lives there), and the run's temporary folder as the only writable place that
   persists; it is deleted afterwards. The user's own home is hidden too when it lies elsewhere.
2. **An unprivileged user.** When grpolab runs as root the sandbox drops to a uid of its own (no groups,
   no capabilities) before any model code runs, because the kernel does not apply the process limit to
   root. Each concurrent sandbox has its own uid (from the process id and a slot), so sandboxes do not
   share a process count; after every run all processes of that uid are killed.
3. **Resource limits** (always): CPU seconds, address space (memory), size of any file written, number of
   processes, open files, no core dumps; a wall-clock limit enforced from outside; a stripped environment;
   stdout/stderr go to files (bounded by the file-size limit), never into this process's memory.
4. **A Python audit hook** (always, defence in depth): refuses sockets, writes outside the temporary
   folder and reads under the home folders. It is what stops network access and home reads in the
   limits-only fallback.

Without bubblewrap (or where it cannot create namespaces, e.g. some CI runners or containers) the sandbox
falls back to layers 2-4 and warns once. Set `GRPOLAB_SANDBOX=limits` to force the fallback.

Not guarded against: kernel exploits; side channels; reads of world-readable files outside the home
folders (the system is visible read-only); in the fallback, anything that bypasses the audit hook
(ctypes, a C extension, `os.system` of a binary that opens a socket) and, when not running as root,
processes that leave the process group with `setsid` and survive the run; reward hacking inside the
rules, e.g. returning an object whose `__eq__` is always true, or finding the result nonce in the
harness's memory.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

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


@dataclass
class SandboxLimits:
    timeout_seconds: float = 10.0  # wall clock
    memory_mb: int = 1024  # address space
    file_size_mb: int = 16
    max_processes: int = 32
    max_open_files: int = 64


@dataclass
class SandboxResult:
    status: str  # "passed" (all tests), "failed", "timeout", "error" (the program itself raised)
    passed: int
    total: int
    seconds: float
    isolation: str
    stdout: str = ""
    stderr: str = ""

    @property
    def fraction(self) -> float:
        return self.passed / self.total if self.total else 0.0


# Runs inside the sandbox. Limits and the audit hook are installed before any model code is compiled;
# `exec`/`compile`/`open` are bound to locals first so a program cannot replace them to fake a pass.
HARNESS = r"""
import json, os, resource, sys, traceback
spec = json.loads(sys.stdin.read())
for name, value in spec["rlimits"].items():
    resource.setrlimit(getattr(resource, name), (value, value))
for module in spec["preload"]:
    __import__(module)
if spec["uid"] is not None:  # as root: drop to the sandbox's own uid; rlimits on processes bind only then
    os.setgroups([])
    os.setgid(spec["uid"])
    os.setuid(spec["uid"])
work, hidden, allowed = spec["work"], tuple(spec["hidden"]), tuple(spec["allowed"])
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
PATH_EVENTS = {"os.mkdir": 1, "os.rename": 2, "os.replace": 2, "os.remove": 1, "os.rmdir": 1, "os.chmod": 1,
               "os.chown": 1, "os.truncate": 1, "os.utime": 1, "os.link": 2, "os.symlink": 2, "shutil.rmtree": 1}
def _inside(path, root, realpath=os.path.realpath, fsdecode=os.fsdecode):
    return (realpath(fsdecode(path)) + "/").startswith(root + "/")
def _hook(event, args, work=work, hidden=hidden, allowed=allowed, inside=_inside, isinstance=isinstance):
    if event.startswith("socket.") and event != "socket.gethostname":
        raise PermissionError("sandbox: no network")
    if event == "open" and isinstance(args[0], (str, bytes)):
        if (args[2] or 0) & WRITE_FLAGS and not inside(args[0], work):
            raise PermissionError("sandbox: writes only in its own folder")
        if any(inside(args[0], h) for h in hidden) and not any(inside(args[0], a) for a in allowed):
            raise PermissionError("sandbox: home folders are hidden")
    if event in PATH_EVENTS:
        for path in args[: PATH_EVENTS[event]]:
            if isinstance(path, (str, bytes)) and not inside(path, work):
                raise PermissionError("sandbox: changes only in its own folder")
sys.addaudithook(_hook)
_exec, _compile, _open, _dumps, nonce = exec, compile, open, json.dumps, spec["nonce"]
program, tests, result_path = spec["program"], spec["tests"], spec["result"]
del spec
passed, state = 0, "error"
namespace = {"__name__": "__main__"}
try:
    _exec(_compile(program, "program.py", "exec"), namespace)
    state = "ran"
except BaseException:
    traceback.print_exc()
if state == "ran":
    for test in tests:
        try:
            _exec(_compile(test, "test.py", "exec"), namespace)
            passed += 1
        except BaseException:
            traceback.print_exc()
with _open(result_path, "w") as out:
    out.write(_dumps({"nonce": nonce, "state": state, "passed": passed}))
"""


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


def bwrap_command(work: str, as_root: bool) -> list[str]:
    """The bubblewrap prefix: see the module docstring for what each part guards. As root, bwrap needs no
    user namespace (the harness drops to the sandbox uid itself); otherwise it makes one and maps to nobody."""
    command = ["bwrap", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp"]
    command += [arg for home in hidden_homes() for arg in ("--perms", "0755", "--tmpfs", home)]
    for needed in interpreter_folders():
        if any((needed + "/").startswith(home + "/") for home in hidden_homes()):
            parents = [str(parent) for parent in reversed(Path(needed).parents) if str(parent) != "/"]
            command += [arg for parent in parents for arg in ("--perms", "0755", "--dir", parent)]
            command += ["--ro-bind", needed, needed]
    command += ["--bind", work, work, "--chdir", work, "--die-with-parent", "--new-session", "--clearenv"]
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
            shutil.rmtree(work, ignore_errors=True)
    print(f"grpolab sandbox: warning: {reason}; falling back to resource limits only", file=sys.stderr)
    return "limits"


def make_work_dir(uid: int | None) -> str:
    work = tempfile.mkdtemp(prefix="grpolab-sandbox-")
    if uid is not None:
        os.chown(work, uid, uid)
    return os.path.realpath(work)


def kill_uid(uid: int | None) -> None:
    """Kill every process of the sandbox's uid: a shell running as that uid signals -1, which reaches all
    processes of its uid (and nothing else). A few passes: a process may fork while a pass runs."""
    if uid is None:
        return
    for _ in range(3):
        subprocess.run(
            ["/bin/sh", "-c", "kill -9 -1"],
            user=uid,
            group=uid,
            extra_groups=[],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={},
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


def rlimits(limits: SandboxLimits) -> dict[str, int]:
    mb = 1024 * 1024
    return {
        "RLIMIT_CPU": max(1, int(limits.timeout_seconds + 0.999)),
        "RLIMIT_AS": limits.memory_mb * mb,
        "RLIMIT_FSIZE": limits.file_size_mb * mb,
        "RLIMIT_NPROC": limits.max_processes,
        "RLIMIT_NOFILE": limits.max_open_files,
        "RLIMIT_CORE": 0,
    }


def tail(path: Path, limit: int = 2000) -> str:
    try:
        with open(path, "rb") as file:
            file.seek(max(0, file.seek(0, 2) - limit))
            return file.read().decode(errors="replace")
    except OSError:
        return ""


def run_python(program: str, tests: list[str], limits: SandboxLimits | None = None) -> SandboxResult:
    """Run `program`, then each test in the same namespace, sandboxed; count the tests that pass.
    Safe to call from several threads at once (up to SLOTS run together; more wait)."""
    with uid_slots(os.getpid()).uid() as uid:
        return run_as(program, tests, limits or SandboxLimits(), isolation(), uid)


def run_as(program: str, tests: list[str], limits: SandboxLimits, mode: str, uid: int | None) -> SandboxResult:
    work = make_work_dir(uid)
    nonce = secrets.token_hex(16)
    spec = {
        "rlimits": rlimits(limits),
        "work": work,
        "hidden": hidden_homes(),
        "allowed": interpreter_folders(),
        "uid": uid,
        # Without bwrap the stdlib may sit in root's home, unreadable after the drop: import it first.
        "preload": list(PRELOAD) if mode == "limits" and uid is not None else [],
        "nonce": nonce,
        "program": program,
        "tests": tests,
        "result": os.path.join(work, "result.json"),
    }
    command = [interpreter(), "-I", "-S", "-B", "-c", HARNESS]
    if mode == "bwrap":
        command = [*bwrap_command(work, uid is not None), *command]
    start = time.perf_counter()
    timed_out = False
    try:
        with open(os.path.join(work, "stdout"), "wb") as out, open(os.path.join(work, "stderr"), "wb") as err:
            process = subprocess.Popen(
                command,
                stdin=subprocess.PIPE,
                stdout=out,
                stderr=err,
                cwd=work,
                env=clean_environment(work),
                start_new_session=True,
            )
            try:
                process.communicate(json.dumps(spec).encode(), timeout=limits.timeout_seconds)
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                kill_uid(uid)
        seconds = time.perf_counter() - start
        return read_result(Path(work), nonce, len(tests), timed_out, seconds, mode)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def read_result(work: Path, nonce: str, total: int, timed_out: bool, seconds: float, mode: str) -> SandboxResult:
    stdout, stderr = tail(work / "stdout"), tail(work / "stderr")
    base = {"total": total, "seconds": seconds, "isolation": mode, "stdout": stdout, "stderr": stderr}
    if timed_out:
        return SandboxResult(status="timeout", passed=0, **base)
    try:
        result = json.loads((work / "result.json").read_text())
        if result.get("nonce") != nonce:
            raise ValueError("wrong nonce")
        passed = int(result["passed"])
    except (OSError, ValueError, KeyError, TypeError):
        return SandboxResult(status="error", passed=0, **base)
    if result.get("state") != "ran":
        return SandboxResult(status="error", passed=0, **base)
    return SandboxResult(status="passed" if passed == total else "failed", passed=passed, **base)
