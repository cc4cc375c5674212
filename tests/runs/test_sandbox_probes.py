"""The holes a tester found in the sandbox, probed as a user meets them (through `grpolab score` on HumanEval
rows) in every isolation mode this machine offers: FIFOs in the work folder, faked passes, host sockets, the
disk quota. Each program here is hostile; each must score 0 (a correct function next to it scores 1), end
within the time limit plus a generous margin, and leave no folder behind."""

from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid

import pytest

from grpolab.cli import main
from grpolab.rewards.sandbox import SandboxLimits, run_python
from grpolab.tasks import get_task
from tests.unit.test_sandbox import (  # noqa: F401 (mode, private_temp: fixtures)
    mode,
    private_temp,
    sandbox_folders,
    sandbox_processes,
)

TIMEOUT = 5.0
MARGIN = 10.0  # seconds: interpreter start-up and clean-up on a loaded machine
MB = 1024 * 1024
OVERSHOOT_MB = 128  # generous: the watchdog's poll waits for a CPU on a loaded machine
WRONG = "    return True\n"  # HumanEval/0 expects False in some asserts

pytestmark = pytest.mark.usefixtures("mode")  # every test, in every isolation mode (bwrap, limits)


@pytest.fixture(scope="module")
def problems():
    return get_task("humaneval").problems()


def score_rows(tmp_path, capsys, rows: list[dict], timeout: float = TIMEOUT, workers: int = 16) -> list[float]:
    """`grpolab score task=humaneval` on `rows`, all sandboxes at once; asserts the run's time bound and
    that no sandbox folder or process is left; returns the rewards."""
    source, output = tmp_path / f"in-{uuid.uuid4().hex}.jsonl", tmp_path / f"out-{uuid.uuid4().hex}.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in rows))
    before = sandbox_folders()
    start = time.monotonic()
    workers = min(len(rows), workers)
    args = ["score", "task=humaneval", f"input={source}", f"output={output}", f"reward.timeout_seconds={timeout}"]
    code = main([*args, f"reward.num_workers={workers}"])
    elapsed = time.monotonic() - start
    capsys.readouterr()
    assert code == 0
    assert elapsed < timeout * math.ceil(len(rows) / workers) + MARGIN
    assert sandbox_folders() == before and sandbox_processes() == []
    return [json.loads(line)["reward"] for line in output.read_text().splitlines()]


def test_fifos_in_the_work_folder_do_not_hang_the_scorer(tmp_path, capsys, problems):
    fifo_stdout = "import os\ntry:\n    os.unlink('stdout')\nexcept OSError:\n    pass\nos.mkfifo('stdout')\n"
    fifo_result = "import os\nos.mkfifo('result.json')\nos._exit(0)\n"
    locked = "import os\nos.makedirs('a/b')\nos.mkfifo('a/b/f')\nos.chmod('a/b', 0)\nos.chmod('a', 0)\n"
    correct = problems["HumanEval/0"]["canonical_solution"]
    rows = [
        {"task_id": "HumanEval/0", "completion": WRONG + fifo_stdout},
        {"task_id": "HumanEval/0", "completion": WRONG + fifo_result},
        {"task_id": "HumanEval/0", "completion": WRONG + locked},
        {"task_id": "HumanEval/0", "completion": correct + fifo_stdout + locked},  # a FIFO is no reason to fail
    ]
    assert score_rows(tmp_path, capsys, rows) == [0.0, 0.0, 0.0, 1.0]


FORGE = """
import json, os, struct, sys
main = sys.modules['__main__']
fake = json.dumps({'nonce': getattr(main, 'nonce', ''), 'state': 'ran', 'passed': 1})
open('result.json', 'w').write(fake)
for fd in range(3, 64):
    try:
        os.write(fd, struct.pack('>I', len(fake)) + fake.encode())
    except OSError:
        pass
os._exit(0)
"""
PATCH_HARNESS = """
import sys
main = sys.modules['__main__']
main._exec = lambda *a, **k: None
for name, value in list(vars(main).items()):
    if callable(value) and not name.startswith('__'):
        setattr(main, name, lambda *a, **k: None)
"""
BUILTINS = """
import builtins
builtins.AssertionError = type('Quiet', (BaseException,), {})
builtins.abs = lambda x: 0
def len(x):
    return 0
def isinstance(*args):
    return True
"""
ALWAYS_EQUAL = """    class Yes:
        __eq__ = lambda self, other: True
        __bool__ = lambda self: True
    return Yes()
"""


def test_a_wrong_function_cannot_fake_a_pass(tmp_path, capsys, problems):
    hacks = [
        WRONG + PATCH_HARNESS,
        WRONG + FORGE,
        WRONG + "import os\nos._exit(0)\n",
        ALWAYS_EQUAL,
        "    raise SystemExit(0)\n",  # in the middle of the test, at the first call
        "    import os\n    os._exit(0)\n",
        WRONG + BUILTINS,
    ]
    rows = [{"task_id": "HumanEval/0", "completion": hack} for hack in hacks]
    # helpers the tests take from the prompt are the prompt's, not the completion's
    own_poly = "def poly(xs, x):\n    return 0\ndef find_zero(xs):\n    return 0.0\n"
    own_encoder = "def encode_cyclic(s):\n    return s\ndef decode_cyclic(s):\n    return s\n"
    rows += [
        {"task_id": "HumanEval/32", "completion": own_poly},
        {"task_id": "HumanEval/38", "completion": own_encoder},
    ]
    correct = [{"task_id": t, "completion": problems[t]["canonical_solution"]} for t in ("HumanEval/0", "HumanEval/32")]
    assert score_rows(tmp_path, capsys, rows + correct) == [0.0] * len(rows) + [1.0, 1.0]


CTYPES_CONNECT = """
import ctypes, struct
libc = ctypes.CDLL(None, use_errno=True)
def connect(family, address):
    fd = libc.socket(family, 1, 0)  # the syscall itself: no audit hook sees it
    if fd < 0:
        return ctypes.get_errno()
    if libc.connect(fd, address, len(address)) != 0:
        return ctypes.get_errno()
    libc.write(fd, b'leak', 4)
    return 0
unix = struct.pack('=H', 1) + PATH.encode() + bytes(1)
inet = struct.pack('=H', 2) + struct.pack('!H', PORT) + bytes([127, 0, 0, 1]) + bytes(8)
errors = [connect(1, unix), connect(2, inet)]
if any(errors):
    raise OSError(f'blocked: {errors}')
"""


@pytest.fixture
def listeners():
    """A unix socket (0777, under /var/tmp, as the tester's) and a TCP socket on loopback, both listening."""
    path = f"/var/tmp/grpolab-probe-{uuid.uuid4().hex[:12]}.sock"
    unix, inet = socket.socket(socket.AF_UNIX), socket.socket()
    unix.bind(path)
    os.chmod(path, 0o777)
    inet.bind(("127.0.0.1", 0))
    for server in (unix, inet):
        server.listen(8)
        server.settimeout(0.2)
    try:
        yield path, inet.getsockname()[1], (unix, inet)
    finally:
        unix.close()
        inet.close()
        os.unlink(path)


def reached(servers) -> list[bool]:
    """Whether anything connected to each server (a connection waits in the backlog until accepted)."""
    found = []
    for server in servers:
        try:
            server.accept()[0].close()
            found.append(True)
        except TimeoutError:
            found.append(False)
    return found


def test_host_sockets_are_out_of_reach(tmp_path, capsys, problems, listeners):
    path, port, servers = listeners
    attack = f"PATH, PORT = {path!r}, {port}\n" + CTYPES_CONNECT
    # the attack works outside the sandbox: what stops it below is the sandbox
    subprocess.run([sys.executable, "-c", attack], check=True, timeout=30)
    assert reached(servers) == [True, True]
    python_level = f"import socket\ns = socket.socket(socket.AF_UNIX)\ns.connect({path!r})\ns.sendall(b'leak')\n"
    correct = problems["HumanEval/0"]["canonical_solution"]
    rows = [{"task_id": "HumanEval/0", "completion": correct + code} for code in (attack, python_level)]
    assert score_rows(tmp_path, capsys, rows) == [0.0, 0.0]
    assert reached(servers) == [False, False]


def test_socket_syscalls_fail_with_eperm_in_every_mode():
    program = (
        "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
        "for family in (1, 2, 10, 16):\n    print(family, libc.socket(family, 1, 0), ctypes.get_errno())\n"
        "print('pair', libc.socketpair(1, 1, 0, (ctypes.c_int * 2)()), ctypes.get_errno())\n"
        "print('ptrace', libc.ptrace(0, 0, None, None), ctypes.get_errno())\n"
    )
    result = run_python(program, ["assert True"], SandboxLimits(timeout_seconds=TIMEOUT))
    assert result.status == "passed", result.stderr
    assert result.stdout.split("\n")[:6] == ["1 -1 1", "2 -1 1", "10 -1 1", "16 -1 1", "pair -1 1", "ptrace -1 1"]


WRITE_FILES = """
for i in range(20):
    with open(f'big-{i}', 'wb') as file:
        file.write(b'x' * (15 * 1024 * 1024))
    print(i, flush=True)
"""


HOLD_UNLINKED = """
import os, time
held = []
for i in range(8):
    file = open(f'held-{i}', 'wb')
    os.unlink(f'held-{i}')
    held.append(file)
    file.write(b'x' * (15 * 1024 * 1024))
    file.flush()
time.sleep(60)
"""


class PeakDisk:
    """The largest total size of the sandbox folders in the temporary folder while it runs (host side)."""

    def __init__(self):
        self.peak, self.done = 0, threading.Event()
        self.thread = threading.Thread(target=self.watch, daemon=True)

    def watch(self):
        root = tempfile.gettempdir()
        while not self.done.is_set():
            total = 0
            for folder in [f for f in os.listdir(root) if f.startswith("grpolab-sandbox-")]:
                for parent, _, files in os.walk(os.path.join(root, folder)):
                    for name in files:
                        with contextlib.suppress(OSError):
                            total += os.lstat(os.path.join(parent, name)).st_size
            self.peak = max(self.peak, total)
            time.sleep(0.01)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.done.set()
        self.thread.join()


def test_the_disk_quota_stops_a_program_that_fills_the_disk(tmp_path, capsys, problems):
    correct = problems["HumanEval/0"]["canonical_solution"]
    with PeakDisk() as disk:
        assert score_rows(tmp_path, capsys, [{"task_id": "HumanEval/0", "completion": correct + WRITE_FILES}]) == [0.0]
    # the default quota, plus the watchdog's overshoot: what is written between two polls (50 ms, longer when
    # the machine is loaded); unbounded, the program would write 300 MB
    assert disk.peak <= (64 + OVERSHOOT_MB) * MB
    limits = SandboxLimits(timeout_seconds=TIMEOUT, disk_mb=32)
    result = run_python(WRITE_FILES, ["assert True"], limits)
    assert result.status in ("error", "timeout")
    written = [int(line) + 1 for line in result.stdout.split()]
    assert max(written, default=0) * 15 <= 32 + OVERSHOOT_MB, result.stdout  # files finished, in MB
    # files unlinked while held open take space too: the tmpfs counts them, the watchdog finds them in /proc
    result = run_python(HOLD_UNLINKED, ["assert True"], SandboxLimits(timeout_seconds=TIMEOUT))
    assert result.status == "error", (result.status, result.stdout, result.stderr)


def test_plain_values_cross_between_the_sandbox_and_the_tests_exactly():
    program = (
        "def f():\n"
        "    return [float('nan'), float('inf'), 10 ** 40, -0.0, (1, [2]), {3}, frozenset({4}),\n"
        "            {(5, 6): {'a': b'\\x00\\xff'}}, 1 + 2j, None, True, 'ü\\n']\n"
        "def echo(*args, **kwargs):\n    return args, kwargs\n"
        "def handle():\n    return open\n"
        "TABLE = {'k': [1, 2]}\n"
    )
    tests = [
        "v = f(); assert v[0] != v[0] and v[1] == float('inf') and v[2] == 10 ** 40 and str(v[3]) == '-0.0'",
        "v = f(); assert v[4:8] == [(1, [2]), {3}, frozenset({4}), {(5, 6): {'a': b'\\x00\\xff'}}]",
        "v = f(); assert v[8:] == [1 + 2j, None, True, 'ü\\n'] and type(v[10]) is bool",
        "assert type(f()[4]) is tuple and echo(1, x=(2,)) == ((1,), {'x': (2,)})",
        "assert TABLE == {'k': [1, 2]}",
        "handle()",  # a function is not plain data: this test fails, nothing else does
        "echo(lambda: 1)",  # neither as an argument
    ]
    result = run_python(program, tests, SandboxLimits(timeout_seconds=TIMEOUT))
    assert (result.status, result.passed) == ("failed", 5), result.stderr


def test_removing_a_work_folder_never_opens_what_was_put_in_its_place(tmp_path):
    """A FIFO where the folder was (the sandbox uid cannot rename its folder, but grpolab's own uid can) and
    one inside a folder chmod 000: removed, and no open() blocks on them."""
    from grpolab.rewards.sandbox_run import remove_tree

    os.mkfifo(tmp_path / "swapped")
    (tmp_path / "folder" / "locked").mkdir(parents=True)
    os.mkfifo(tmp_path / "folder" / "locked" / "fifo")
    os.chmod(tmp_path / "folder" / "locked", 0)
    for path in (tmp_path / "swapped", tmp_path / "folder"):
        worker = threading.Thread(target=remove_tree, args=(str(path),), daemon=True)
        worker.start()
        worker.join(10)
        assert not worker.is_alive() and not path.exists()


@pytest.mark.slow
def test_all_164_canonical_solutions_pass_and_none_returns_fail_in_every_mode(tmp_path, capsys, problems):
    rows = [{"task_id": task_id, "completion": p["canonical_solution"]} for task_id, p in problems.items()]
    rows += [{"task_id": task_id, "completion": "    return None\n"} for task_id in list(problems)[:20]]
    rewards = score_rows(tmp_path, capsys, rows, timeout=10.0, workers=2)
    assert rewards == [1.0] * 164 + [0.0] * 20
