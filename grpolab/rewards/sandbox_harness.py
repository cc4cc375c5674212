"""The code of the sandbox's two child processes (`grpolab.rewards.sandbox` starts them and reads the verdict).

This module owns what runs outside grpolab's own process: the *candidate* (untrusted: it runs the model's
program), the *checker* (trusted: it runs the tests), the pipe protocol between them, the value codec and
the seccomp filter. It imports only the standard library: `sandbox.py` runs its source with `python -I -S -B
-c`, once with `candidate_main()` appended and once with `checker_main()`.

- **Candidate.** Reads its spec (first frame on fd 0, sent by the checker), sets resource limits, drops to
  the sandbox uid when root, installs the seccomp filter (`socket`, `socketpair`, `ptrace`, process memory
  access, `pidfd_getfd` and `io_uring_setup` fail with EPERM; any other syscall ABI kills the process) and
  an audit hook, then runs the program. It answers the checker's calls: `{"call": name, "args", "kwargs"}`
  in, `{"value": ...}`, `{"raise": "TypeName"}` or `{"unsendable": "TypeName"}` out.
- **Checker.** Runs the trusted `setup` code (e.g. helpers from a HumanEval prompt, such as `poly`), then
  binds the names the program reported (never shadowing builtins or setup names): functions to proxies
  that forward each call to the candidate, plain-data globals to copies. An exception raised in a call
  reaches the test as the builtin exception of that name (else `CandidateError`). It runs each test and
  sends the verdict with the run's nonce on its own fd, which the candidate never holds. It is not dumpable
  (its /proc files are closed to same-uid processes) and dies with its parent (PR_SET_PDEATHSIG).

Values cross the pipe only as plain data (None, bool, int, float, str, bytes, complex, list, tuple, dict,
set, frozenset, nested), encoded as tagged JSON (`encode`/`decode`; unlike `repr` + `ast.literal_eval` it
carries nan and inf), and rebuilt as fresh builtin objects in the checker, so an `__eq__` that is always true
never reaches a comparison. The checker reads at most `max_answer` bytes per answer.

Not carried (such tests fail, never pass by accident): arguments or results that are not plain data
(functions, generators, instances of the program's classes), changes a call makes to its arguments in
place, modules the program imported (a test imports its own), and the program's globals as they change
(plain-data globals are copied once, after the program ran; larger ones than 64 KiB not at all).
"""

from __future__ import annotations

import builtins
import json
import os
import struct
import sys
import traceback

HEADER = struct.Struct(">I")
# seccomp: (AUDIT_ARCH, syscalls refused with EPERM, whether numbers with the x32 bit are refused too)
SECCOMP_TABLES = {
    # socket 41, socketpair 53, ptrace 101, process_vm_readv/writev 310/311, io_uring_setup 425, pidfd_getfd 438
    "x86_64": (0xC000003E, (41, 53, 101, 310, 311, 425, 438), True),
    # socket 198, socketpair 199, ptrace 117, process_vm_readv/writev 270/271, io_uring_setup 425, pidfd_getfd 438
    "aarch64": (0xC00000B7, (198, 199, 117, 270, 271, 425, 438), False),
}
RET_ALLOW, RET_ERRNO_EPERM, RET_KILL_PROCESS = 0x7FFF0000, 0x00050000 | 1, 0x80000000
LOAD_WORD, JUMP_EQUAL, JUMP_AT_LEAST, RETURN = 0x20, 0x15, 0x35, 0x06  # BPF_LD|W|ABS, JMP|JEQ|K, JMP|JGE|K, RET|K
X32_BIT = 0x40000000
MAX_EXPOSED = 1 << 16  # bytes of one plain-data global sent to the checker
PATH_EVENTS = {"os.mkdir": 1, "os.rename": 2, "os.replace": 2, "os.remove": 1, "os.rmdir": 1, "os.chmod": 1}
PATH_EVENTS |= {"os.chown": 1, "os.truncate": 1, "os.utime": 1, "os.link": 2, "os.symlink": 2, "shutil.rmtree": 1}
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


class ProtocolError(Exception):
    """The other side sent something that is not a frame of this protocol."""


class CandidateError(Exception):
    """Raised in a test when the program failed a call in a way no plain exception describes."""


def pack(message) -> bytes:
    data = json.dumps(message, allow_nan=True, separators=(",", ":")).encode()
    return HEADER.pack(len(data)) + data


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def read_exactly(fd: int, size: int) -> bytes:
    chunks, left = [], size
    while left:
        chunk = os.read(fd, min(left, 1 << 16))
        if not chunk:
            raise EOFError("the other side closed the pipe")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def receive(fd: int, limit: int):
    (size,) = HEADER.unpack(read_exactly(fd, HEADER.size))
    if size > limit:
        raise ProtocolError(f"a message of {size} bytes (at most {limit})")
    try:
        return json.loads(read_exactly(fd, size))
    except (ValueError, RecursionError) as error:
        raise ProtocolError(f"not a message: {type(error).__name__}") from None


def encode(value):
    """Plain data as JSON: lists stay lists, every other container becomes a one-key object naming its type."""
    kind = type(value)
    if value is None or kind in (bool, int, float, str):
        return value
    if kind is list:
        return [encode(item) for item in value]
    if kind in (tuple, set, frozenset):
        return {{tuple: "t", set: "s", frozenset: "f"}[kind]: [encode(item) for item in value]}
    if kind is dict:
        return {"d": [[encode(key), encode(item)] for key, item in value.items()]}
    if kind is complex:
        return {"c": [value.real, value.imag]}
    if kind is bytes:
        return {"b": value.hex()}
    raise TypeError(f"not plain data: {kind.__name__}")


def decode(data):
    """The inverse of `encode`, building only builtin objects; anything else is a ValueError."""
    kind = type(data)
    if data is None or kind in (bool, int, float, str):
        return data
    if kind is list:
        return [decode(item) for item in data]
    if kind is not dict or len(data) != 1:
        raise ValueError("not an encoded value")
    ((tag, body),) = data.items()
    if tag == "b" and type(body) is str:
        return bytes.fromhex(body)
    if type(body) is not list:
        raise ValueError("not an encoded value")
    if tag in ("t", "s", "f"):
        return {"t": tuple, "s": set, "f": frozenset}[tag](decode(item) for item in body)
    if tag == "d" and all(type(pair) is list and len(pair) == 2 for pair in body):
        return {decode(key): decode(item) for key, item in body}
    if tag == "c" and len(body) == 2 and all(type(part) in (int, float) for part in body):
        return complex(*body)
    raise ValueError("not an encoded value")


def seccomp_program(machine: str) -> list[tuple[int, int, int, int]]:
    """Classic BPF over `struct seccomp_data` (nr at offset 0, arch at 4): other ABIs are killed (the i386
    and x32 entry points have socket calls of their own), the table's syscalls get EPERM, the rest pass."""
    arch, refused, x32 = SECCOMP_TABLES[machine]
    body = [(JUMP_AT_LEAST, len(refused) + 2, 0, X32_BIT)] if x32 else []
    body += [(JUMP_EQUAL, len(refused) - index, 0, number) for index, number in enumerate(refused)]
    ops = [(LOAD_WORD, 0, 0, 4), (JUMP_EQUAL, 1, 0, arch), (RETURN, 0, 0, RET_KILL_PROCESS), (LOAD_WORD, 0, 0, 0)]
    return ops + body + [(RETURN, 0, 0, RET_ALLOW), (RETURN, 0, 0, RET_ERRNO_EPERM), (RETURN, 0, 0, RET_KILL_PROCESS)]


def install_seccomp(ctypes, machine: str) -> None:
    """PR_SET_NO_NEW_PRIVS, then PR_SET_SECCOMP with `seccomp_program`; raises OSError where it cannot."""
    if machine not in SECCOMP_TABLES:
        raise OSError(f"no seccomp table for {machine!r}")

    class Filter(ctypes.Structure):
        _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte), ("k", ctypes.c_uint)]

    class Program(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(Filter))]

    ops = seccomp_program(machine)
    filters = (Filter * len(ops))(*(Filter(*op) for op in ops))
    program = Program(len(ops), filters)
    libc, ulong = ctypes.CDLL(None, use_errno=True), ctypes.c_ulong
    if libc.prctl(38, ulong(1), ulong(0), ulong(0), ulong(0)) != 0:  # PR_SET_NO_NEW_PRIVS
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
    if libc.prctl(22, ulong(2), ctypes.byref(program), ulong(0), ulong(0)) != 0:  # PR_SET_SECCOMP, MODE_FILTER
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECCOMP)")


def audit_hook(work: str, hidden: tuple, allowed: tuple, packages: tuple):
    """Defence in depth for Python-level calls (ctypes goes around it): no sockets, writes only under `work`,
    no reads under the home folders except the interpreter's own install, none under `packages`."""
    realpath, fsdecode = os.path.realpath, os.fsdecode

    def inside(path, root):
        return (realpath(fsdecode(path)) + "/").startswith(root + "/")

    def hook(event, args, isinstance=isinstance, any=any):
        if event.startswith("socket.") and event != "socket.gethostname":
            raise PermissionError("sandbox: no network")
        if event == "open" and isinstance(args[0], (str, bytes)):
            if (args[2] or 0) & WRITE_FLAGS and not inside(args[0], work):
                raise PermissionError("sandbox: writes only in its own folder")
            if any(inside(args[0], h) for h in hidden) and not any(inside(args[0], a) for a in allowed):
                raise PermissionError("sandbox: home folders are hidden")
            if any(inside(args[0], p) for p in packages):
                raise PermissionError("sandbox: installed packages are hidden")
        for path in args[: PATH_EVENTS.get(event, 0)]:
            if isinstance(path, (str, bytes)) and not inside(path, work):
                raise PermissionError("sandbox: changes only in its own folder")

    return hook


def confine(spec: dict) -> None:
    """Everything before the program's first line: limits, the uid drop, seccomp, the audit hook."""
    import ctypes
    import resource

    for name, value in spec["rlimits"].items():
        resource.setrlimit(getattr(resource, name), (value, value))
    for module in spec["preload"]:
        __import__(module)
    if spec["uid"] is not None:  # as root: the sandbox's own uid; the process limit binds only then
        os.setgroups([])
        os.setgid(spec["uid"])
        os.setuid(spec["uid"])
    try:
        install_seccomp(ctypes, os.uname().machine)
    except OSError as error:  # fail closed: no model code runs without the filter
        print(f"grpolab sandbox: cannot install the seccomp filter ({error}); refusing to run", file=sys.stderr)
        os._exit(3)
    sys.addaudithook(audit_hook(spec["work"], *(tuple(spec[key]) for key in ("hidden", "allowed", "packages"))))


def exposed(namespace: dict) -> dict:
    """The program's names as the checker will see them: callables by name, plain data by value."""
    names = {}
    for name, value in list(namespace.items()):
        if not isinstance(name, str) or name.startswith("__") or type(value) is type(os):
            continue
        if callable(value):
            names[name] = {"call": True}
        else:
            try:
                encoded = encode(value)
                if len(pack(encoded)) <= MAX_EXPOSED:  # a big table stays in the sandbox; the ready frame small
                    names[name] = {"value": encoded}
            except (TypeError, ValueError, RecursionError):
                continue
    return names


def flush() -> None:
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (AttributeError, ValueError, OSError):  # the program closed or replaced them: its loss
        pass


def answer(namespace: dict, request) -> dict:
    try:
        result = namespace[request["call"]](*decode(request["args"]), **decode(request["kwargs"]))
    except BaseException as error:  # SystemExit and KeyboardInterrupt too: the test sees a failed call
        return {"raise": type(error).__name__}
    try:
        value = encode(result)
        pack(value)  # ints too long for JSON fail here, not while sending
    except (TypeError, ValueError, RecursionError):
        return {"unsendable": type(result).__name__}
    return {"value": value}


def candidate_main() -> None:
    spec = receive(0, 1 << 30)
    out = spec["answers"]
    confine(spec)
    namespace, state = {"__name__": "__main__"}, "error"
    try:
        exec(compile(spec["program"], "program.py", "exec"), namespace)
        state = "ran"
    except BaseException:
        traceback.print_exc()
    flush()
    write_all(out, pack({"state": state, "names": exposed(namespace) if state == "ran" else {}}))
    while True:
        try:
            request = receive(0, 1 << 30)
        except (EOFError, ProtocolError):
            os._exit(0)  # the checker is done; threads the program started must not keep this alive
        write_all(out, pack(answer(namespace, request)))
        flush()


class Candidate:
    """The checker's end of the pipes to the candidate. A broken stream fails every later call."""

    def __init__(self, requests: int, answers: int, max_answer: int):
        self.requests, self.answers, self.max_answer = requests, answers, max_answer
        self.broken = ""

    def exchange(self, message):
        if self.broken:
            raise CandidateError(f"sandbox: the program stopped answering ({self.broken})")
        try:
            write_all(self.requests, pack(message))
            return receive(self.answers, self.max_answer)
        except (OSError, EOFError, ProtocolError, struct.error) as error:
            self.broken = f"{type(error).__name__}: {error}"
            raise CandidateError(f"sandbox: the program stopped answering ({self.broken})") from None

    def call(self, name: str, args: tuple, kwargs: dict):
        message = {"call": name, "args": encode(list(args)), "kwargs": encode(kwargs)}  # TypeError: not plain
        reply = self.exchange(message)
        if type(reply) is dict and "value" in reply:
            try:
                return decode(reply["value"])
            except (ValueError, TypeError, RecursionError):
                raise CandidateError("sandbox: the program answered with something that is not a value") from None
        if type(reply) is dict and type(reply.get("raise")) is str:
            raise builtin_exception(reply["raise"])
        if type(reply) is dict and "unsendable" in reply:
            raise TypeError(f"sandbox: {name}() returned {str(reply['unsendable'])[:80]}, which is not plain data")
        raise CandidateError("sandbox: the program's answer is not a reply")


def builtin_exception(name: str) -> BaseException:
    """The builtin exception the program raised (the test may expect it), else a CandidateError."""
    kind = getattr(builtins, name, None)
    if isinstance(kind, type) and issubclass(kind, Exception):
        try:
            return kind("raised in the sandbox by the program")
        except TypeError:  # e.g. UnicodeDecodeError wants five arguments
            pass
    return CandidateError(f"sandbox: the program raised {name[:80]}")


class Remote:
    """A program's function as the tests see it: each call is a round trip to the candidate."""

    def __init__(self, candidate: Candidate, name: str):
        self._candidate, self.__name__ = candidate, name

    def __call__(self, *args, **kwargs):
        return self._candidate.call(self.__name__, args, kwargs)

    def __repr__(self) -> str:
        return f"<sandboxed {self.__name__}>"


def test_namespace(spec: dict, candidate: Candidate, names) -> dict:
    """Setup first (its names and the builtins win), then the program's names as proxies or values."""
    namespace = {"__name__": "__main__"}
    exec(compile(spec["setup"], "setup.py", "exec"), namespace)
    for name, entry in names.items() if type(names) is dict else ():
        if not name.isidentifier() or name in namespace or hasattr(builtins, name) or type(entry) is not dict:
            continue
        if entry.get("call") is True:
            namespace[name] = Remote(candidate, name)
        elif "value" in entry:
            try:
                namespace[name] = decode(entry["value"])
            except (ValueError, TypeError, RecursionError):
                continue
    return namespace


def run_tests(spec: dict, candidate: Candidate) -> dict:
    try:
        write_all(candidate.requests, pack(spec["candidate"]))
        ready = receive(candidate.answers, candidate.max_answer)
    except (OSError, EOFError, ProtocolError, struct.error) as error:
        return {"state": "error", "passed": 0, "log": f"the program exited before its tests ran ({error})"}
    if type(ready) is not dict or ready.get("state") != "ran":
        return {"state": "error", "passed": 0, "log": "the program raised or exited before its tests ran"}
    try:
        namespace = test_namespace(spec, candidate, ready.get("names"))
    except Exception:
        return {"state": "error", "passed": 0, "log": "the setup code failed:\n" + traceback.format_exc()[-1500:]}
    passed, log = 0, []
    for test in spec["tests"]:
        try:
            exec(compile(test, "test.py", "exec"), namespace)
            passed += 1
        except BaseException:  # a failed assert, the program's exception, SystemExit from a test: not passed
            log.append(traceback.format_exc()[-1500:])
    return {"state": "ran", "passed": passed, "log": "".join(log)[-3000:]}


def checker_main() -> None:
    import ctypes
    import resource

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(4, ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0))  # PR_SET_DUMPABLE
    libc.prctl(1, ctypes.c_ulong(9), ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0))  # PDEATHSIG KILL
    spec = receive(0, 1 << 30)
    for name, value in spec["rlimits"].items():
        resource.setrlimit(getattr(resource, name), (value, value))
    candidate = Candidate(spec["requests"], spec["answers"], spec["max_answer"])
    verdict = run_tests(spec, candidate)
    flush()
    write_all(spec["verdict"], pack({"nonce": spec["nonce"], **verdict}))
    os._exit(0)
