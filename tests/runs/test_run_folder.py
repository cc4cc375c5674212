"""The run folder holds: overwrite empties only runs, a failed start can be retried, a folder is locked while a
run trains in it, a resume never changes what a run computes behind config.yaml's back, a torn metrics line
does not break the resume, and bad input is one line with a non-zero exit (issue 18's probes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from grpolab.errors import RunFolderError
from grpolab.runs.checkpoint import truncate_metrics
from grpolab.runs.folder import RUN_MARKER, RunLock, never_started, prepare_run_dir
from tests.conftest import ROOT, TINY, run_cli

QUICK = [*TINY, "train.max_steps=1", "eval.n=2", "log.report=false"]


def one_line_error(result, *words):
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for word in words:
        assert word in lines[0], lines[0]


def test_overwrite_never_empties_a_folder_that_holds_no_run(tmp_path):
    project = tmp_path / "proj"
    project.mkdir()
    (project / "important.py").write_text("keep me")
    for output_dir in (str(project), "."):
        result = run_cli("train", *QUICK, f"output_dir={output_dir}", "overwrite=true", cwd=project)
        one_line_error(result, "holds no grpolab run")
        assert (project / "important.py").read_text() == "keep me"


def test_overwrite_never_empties_the_working_folder_or_home(tmp_path, monkeypatch):
    run = tmp_path / "run"
    prepare_run_dir(run, overwrite=False)
    (run / "metrics.jsonl").write_text('{"step": 1}\n')  # a run that did train
    monkeypatch.chdir(run)
    with pytest.raises(RunFolderError, match="working folder"):
        prepare_run_dir(Path("."), overwrite=True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(run))
    with pytest.raises(RunFolderError, match="home folder"):
        prepare_run_dir(run, overwrite=True)
    assert (run / "metrics.jsonl").exists()


def test_overwrite_empties_a_run_folder(tmp_path):
    run = prepare_run_dir(tmp_path / "run", overwrite=False)
    (run / "metrics.jsonl").write_text('{"step": 1}\n')
    with pytest.raises(FileExistsError, match="already holds a run"):
        prepare_run_dir(run, overwrite=False)
    prepare_run_dir(run, overwrite=True)
    assert sorted(p.name for p in run.iterdir()) == [RUN_MARKER]


def test_a_failure_before_the_first_step_does_not_block_the_retry(tmp_path):
    run = tmp_path / "run"
    bad = run_cli("train", *QUICK, "eval.n=100000", f"output_dir={run}")
    one_line_error(bad, "eval.n")
    assert not run.exists() or never_started(run)
    data = tmp_path / "rows.jsonl"
    data.write_text('{"question": "1+1", "answer": "2"}\n')
    bad_model = run_cli("train", *QUICK, "model=/no/such/model", f"output_dir={run}")
    one_line_error(bad_model, "does not exist")
    assert not run.exists() or never_started(run)
    (run / "events.out.tfevents.1.host").write_bytes(b"x")  # what a run stopped during evaluation leaves
    assert never_started(run)
    good = run_cli("train", *QUICK, f"output_dir={run}")
    assert good.returncode == 0, good.stderr
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1]


def test_a_locked_run_folder_is_refused(tmp_path):
    run = prepare_run_dir(tmp_path / "run", overwrite=False)
    lock = RunLock(run)
    try:
        with pytest.raises(RunFolderError, match=f"in use by pid {os.getpid()}"):
            RunLock(run)
        (run / "config.yaml").write_text(yaml.safe_dump({"model": "tiny-random"}))
        result = run_cli("train", "--resume", str(run))
        one_line_error(result, "in use by pid")
        result = run_cli("train", *QUICK, f"output_dir={run}", "overwrite=true")
        one_line_error(result, "in use by pid")
        assert (run / "config.yaml").exists()
    finally:
        lock.release()
    RunLock(run).release()  # free again once the holder has let go


def test_torn_last_metrics_line_is_dropped_and_damage_elsewhere_is_named(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": 2}\n{"step": 3, "lo')
    truncate_metrics(path, 5)
    assert path.read_text() == '{"step": 1}\n{"step": 2}\n'
    path.write_text('{"step": 1}\n{"ste\n{"step": 3}\n')
    with pytest.raises(RunFolderError, match="line 2"):
        truncate_metrics(path, 5)
    assert path.read_text() == '{"step": 1}\n{"ste\n{"step": 3}\n'  # nothing rewritten


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("resume") / "run"
    args = [*TINY, "train.max_steps=2", "train.save_every=1", "eval.n=2", "log.report=false", "log.samples_every=1"]
    run_cli("train", *args, f"output_dir={run}", check=True)
    return run


def test_resume_refuses_a_change_that_alters_the_run(short_run):
    saved = (short_run / "config.yaml").read_text()
    for change in ("rollout.group_size=2", "model=other", "train.learning_rate=0.5"):
        result = run_cli("train", "--resume", str(short_run), change)
        one_line_error(result, "resume:", change.split("=")[0])
    assert (short_run / "config.yaml").read_text() == saved


def test_resume_records_an_allowed_change_and_survives_a_torn_line(short_run):
    metrics = short_run / "metrics.jsonl"
    with open(metrics, "a") as handle:
        handle.write('{"step": 3, "reward_me')  # the disk filled while this line was written
    (short_run / ".final.abc123").mkdir()  # a staging folder a crash left behind
    result = run_cli("train", "--resume", str(short_run), "train.max_steps=3")
    assert result.returncode == 0, result.stderr
    assert yaml.safe_load((short_run / "config.yaml").read_text())["train"]["max_steps"] == 3
    assert [json.loads(line)["step"] for line in metrics.read_text().splitlines()] == [1, 2, 3]
    samples = [json.loads(line)["step"] for line in (short_run / "samples.jsonl").read_text().splitlines()]
    assert sorted(set(samples)) == [1, 2, 3] and samples == sorted(samples)
    assert samples.count(2) == samples.count(1)  # the last step's rows are not written twice
    assert not (short_run / ".final.abc123").exists()


@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan", "1e400"])
def test_non_finite_floats_are_refused(value):
    one_line_error(run_cli("train", *QUICK, f"train.learning_rate={value}"), "train.learning_rate", "finite")


def test_non_utf8_config_file_is_one_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_bytes(b"model: tiny-random\nname: caf\xe9\n")
    one_line_error(run_cli("train", str(path)), "not UTF-8")


def test_unusable_output_dirs_are_one_line(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    one_line_error(run_cli("train", *QUICK, f"output_dir={afile}/run"), "afile")
    readonly = tmp_path / "ro"
    readonly.mkdir()
    readonly.chmod(0o555)
    try:
        if os.access(readonly, os.W_OK):  # root writes anyway: make the folder a file's child instead
            readonly = afile
        one_line_error(run_cli("train", *QUICK, f"output_dir={readonly}/run"), str(readonly))
    finally:
        (tmp_path / "ro").chmod(0o755)


def test_unwritable_model_cache_is_one_line(tmp_path):
    blocker = tmp_path / "cache"
    blocker.write_text("a file where the cache folder should be")
    result = run_cli("train", *QUICK, f"output_dir={tmp_path / 'run'}", env={"GRPOLAB_CACHE": str(blocker)})
    one_line_error(result, "GRPOLAB_CACHE")


def test_disk_full_while_saving_is_one_line(tmp_path):
    """/dev/full fails every write with ENOSPC: the model cache write stands in for a full disk."""
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full on this system")
    script = (
        "import sys\nfrom grpolab.cli import main\nimport grpolab.training.trainer as trainer\n"
        "def full(path, data):\n    open('/dev/full', 'w').write('x' * 65536)\n"
        "trainer.write_json_atomic = full\n"
        f"sys.exit(main(['train', *{QUICK!r}, 'output_dir={tmp_path / 'run'}']))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode != 0
    assert "No space left on device" in result.stderr.strip().splitlines()[-1]
    assert "Traceback" not in result.stderr
