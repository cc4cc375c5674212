"""The sandbox against hostile programs, in every isolation mode this machine offers: each scores 0,
ends within its time limit, leaves no trace outside its temporary folder, and this process keeps running."""

from __future__ import annotations

import os
import socket
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from grpolab.rewards import sandbox
from grpolab.rewards.code import SandboxedTests, sandboxed_tests_reward
from grpolab.rewards.sandbox import SandboxLimits

LIMITS = SandboxLimits(timeout_seconds=2.0, memory_mb=512)
MARGIN = 3.0  # seconds for interpreter start-up and the clean-up sweep on a loaded machine


def available_modes() -> list[str]:
    sandbox.isolation.cache_clear()
    modes = ["limits"]
    if sandbox.isolation() == "bwrap":
        modes.insert(0, "bwrap")
    sandbox.isolation.cache_clear()
    return modes


@pytest.fixture(params=available_modes())
def mode(request, monkeypatch):
    if request.param == "limits":
        monkeypatch.setenv("GRPOLAB_SANDBOX", "limits")
    else:
        monkeypatch.delenv("GRPOLAB_SANDBOX", raising=False)
    sandbox.isolation.cache_clear()
    assert sandbox.isolation() == request.param
    yield request.param
    sandbox.isolation.cache_clear()


@pytest.fixture(autouse=True)
def private_temp(tmp_path, monkeypatch):
    """Sandbox folders go to a temporary folder of this test's own, so that another test run on the machine
    (another checkout's, CI's) cannot make "no folder left" fail, nor this run fail it."""
    folder = tmp_path / "temp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))


def sandbox_folders() -> set[str]:
    return {p for p in os.listdir(tempfile.gettempdir()) if p.startswith("grpolab-sandbox-")}


def sandbox_processes() -> list[int]:
    """Living processes (not zombies) with a sandbox uid of this process (other processes' sandboxes are
    theirs to clean up), read from /proc."""
    first = sandbox.UID_BASE + os.getpid() * sandbox.SLOTS
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            status = dict(line.split(":", 1) for line in Path(f"/proc/{entry}/status").read_text().splitlines())
        except (OSError, ValueError):
            continue
        uid = int(status["Uid"].split()[0])
        if first <= uid < first + sandbox.SLOTS and status["State"].split()[0] not in ("Z", "X"):
            found.append(int(entry))
    return found


def check_hostile(program: str, tests: list[str]) -> None:
    before = sandbox_folders()
    start = time.monotonic()
    assert sandboxed_tests_reward(program, tests, LIMITS) == 0.0
    assert time.monotonic() - start < LIMITS.timeout_seconds + MARGIN
    assert sandbox_folders() == before
    assert sandbox_processes() == []


def test_a_correct_program_passes_and_partial_credit_counts(mode):
    program = "import math\ndef f(x):\n    return math.floor(x) + 1\n"
    assert sandboxed_tests_reward(program, ["assert f(1) == 2", "assert f(2.5) == 3"], LIMITS) == 1.0
    assert sandboxed_tests_reward(program, ["assert f(1) == 2", "assert f(2) == 4"], LIMITS, partial=True) == 0.5
    assert sandboxed_tests_reward(program, ["assert f(1) == 2", "assert f(2) == 4"], LIMITS) == 0.0


def test_exit_zero_does_not_count_as_a_pass(mode):
    assert sandboxed_tests_reward("import sys\nsys.exit(0)\n", ["assert True"], LIMITS) == 0.0
    assert sandboxed_tests_reward("import os\nos._exit(0)\n", ["assert True"], LIMITS) == 0.0


def test_infinite_loop(mode):
    check_hostile("while True:\n    pass\n", ["assert True"])


def test_fork_bomb(mode):
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    check_hostile(bomb, ["assert True"])


def test_memory_bomb(mode):
    check_hostile("blocks = []\nwhile True:\n    blocks.append(bytearray(64 * 1024 * 1024))\n", ["assert True"])


def test_writing_outside_its_folder(mode, tmp_path):
    target = tmp_path / f"escaped-{uuid.uuid4().hex}"
    program = f"open({str(target)!r}, 'w').write('x')\n"
    check_hostile(program, [f"import os\nassert os.path.exists({str(target)!r})"])
    assert not target.exists()


def test_network_socket(mode):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        server.settimeout(0.2)
        port = server.getsockname()[1]
        program = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1).sendall(b'x')\n"
        check_hostile(program, ["assert True"])
        with pytest.raises(socket.timeout):
            server.accept()


def test_reading_a_file_from_the_home_folder(mode):
    secret = Path.home() / f".grpolab-sandbox-secret-{uuid.uuid4().hex}"
    secret.write_text("s3cret")
    try:
        check_hostile(f"data = open({str(secret)!r}).read()\n", ["assert data == 's3cret'"])
    finally:
        secret.unlink()


def test_concurrent_sandboxes_do_not_disturb_each_other(mode):
    """A fork bomb next to honest programs: each sandbox has its own uid, process count and kill sweep."""
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    honest = "import time\ntime.sleep(1.0)\ndef f():\n    return 1\n"
    rows = [(bomb, ["assert True"]), (honest, ["assert f() == 1"]), (honest, ["assert f() == 1"])]
    rewards = SandboxedTests(lambda completion, example: rows[example["i"]], LIMITS, concurrency=3)
    start = time.monotonic()
    assert rewards.batch(["a", "b", "c"], [{"i": 0}, {"i": 1}, {"i": 2}]) == [0.0, 1.0, 1.0]
    assert time.monotonic() - start < LIMITS.timeout_seconds + MARGIN
    assert sandbox_processes() == []
    assert rewards("b", {"i": 1}) == 1.0 and len(rewards.results) == 2  # remembered: not run again
