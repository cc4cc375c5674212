"""Conventions every command shares: `--version`, `key=value` instead of `--key value`, `--help` that says what each
key is, presets found by name and shipped in the package, group-readable run files, run folders that never
collide."""

import dataclasses
import fnmatch
import importlib.metadata
import importlib.resources
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from grpolab.cli import build_parser, main, parse_arguments
from grpolab.commands.train import config_file
from grpolab.config import (
    Config,
    ConfigError,
    describe_keys,
    field_comments,
    load_config,
    task_folder_name,
    to_yaml,
)
from grpolab.runs.checkpoint import save_checkpoint
from grpolab.runs.folder import save_model_atomic, write_json_atomic, write_text_atomic
from grpolab.runs.staging import current_umask
from tests.conftest import PRESETS, ROOT, TINY, run_cli

# --- 1. --version


def test_version_prints_the_installed_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"grpolab {importlib.metadata.version('grpolab')}\n"
    assert "--version" in build_parser().format_help()


# --- 2. key=value, never --key value


@pytest.mark.parametrize(
    "argv, hint",
    [
        (["sample", "--model", "tiny-random"], "unknown flag --model; write model=tiny-random"),
        (["train", "--task=gsm8k"], "unknown flag --task; write task=gsm8k"),
        (["train", "--rollout.group-size", "4"], "unknown flag --rollout.group-size; write rollout.group_size=4"),
        (["sft", "--overwrite"], "unknown flag --overwrite; write overwrite=true"),
        (["eval", "--n", "3", "k=2"], "unknown flag --n; write n=3"),
        (["pipeline", "--output-dir"], "unknown flag --output-dir; write output_dir=X"),
        (["eval", "--model", "tiny-random"], "unknown flag --model; write model=tiny-random"),
        (["chat", "tiny-random", "--prompt", "hi"], "unknown flag --prompt; write prompt=hi"),
        (["score", "--task", "gsm8k"], "unknown flag --task; write task=gsm8k"),
    ],
)
def test_a_flag_for_a_config_key_is_refused_with_its_key_value(capsys, argv, hint):
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line == f"grpolab {argv[0]}: error: {hint} (every command takes key=value)"


def test_real_flags_keep_working():
    parser = build_parser()
    args = parse_arguments(parser, ["train", "a=1", "--quiet", "b=2", "--resume", "runs/x", "--nproc", "2"])
    assert (args.args, args.quiet, args.resume, args.nproc) == (["a=1", "b=2"], True, "runs/x", 2)
    assert parse_arguments(parser, ["sft", "--quiet", "data=x.jsonl"]).quiet
    chat = parse_arguments(parser, ["chat", "runs/x", "task=gsm8k", "seed=3"])
    assert chat.args == ["runs/x", "task=gsm8k", "seed=3"]


def test_an_unknown_flag_that_is_no_key_is_still_argparse_s_error(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["train", "--bogus"])
    assert stop.value.code == 2 and "unrecognized arguments: --bogus" in capsys.readouterr().err


# --- 3. --help says what each key is


@dataclass
class Inner:
    depth: int = 2  # how deep


@dataclass
class Documented:
    """A docstring is no field's comment."""

    plain: int = 1
    trailing: float = 0.5  # on the line
    # above the field,
    # on two lines
    above: str = "x"
    # a comment cut off by a blank line

    after_blank: bool = False
    both: int = 3  # the line's own comment wins
    inner: Inner = field(default_factory=Inner)
    long: str = ""  # word word word word word word word word word word word word word word word word word word word

    def method(self) -> None:
        value: int = 0  # not a field
        del value


@dataclass
class Derived(Documented):
    trailing: float = 0.25  # its own comment
    both: int = 4


def test_describe_keys_takes_each_key_s_comment():
    lines = describe_keys(Derived())
    assert lines[:6] == [
        "  plain = 1  (an integer)",
        "  trailing = 0.25  (a float) – its own comment",
        "  above = 'x'  (a string) – above the field, on two lines",
        "  after_blank = False  (true or false)",
        "  both = 4  (an integer) – the line's own comment wins",  # redeclared without one: its base's comment
        "  inner.depth = 2  (an integer) – how deep",
    ]
    assert "value" not in field_comments(Documented)
    assert field_comments(Documented) is field_comments(Documented)  # read from the source once


def test_describe_keys_shortens_a_long_comment(monkeypatch):
    monkeypatch.setattr("grpolab.config.describe.HELP_WIDTH", 80)
    (line,) = [line for line in describe_keys(Documented()) if line.startswith("  long")]
    assert len(line) <= 80 and line.endswith("word…")


def test_a_root_config_s_redeclared_name_keeps_the_run_config_s_description():
    (line,) = [line for line in describe_keys(Config()) if line.startswith("  name = ")]
    assert line.startswith("  name = 'grpo-{task}-{time}'  (a string) – ") and "runs/" in line


def test_help_of_every_config_command_describes_its_keys(capsys):
    for command in ("train", "eval", "sft", "sample", "distill", "pipeline"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        keys = [line for line in capsys.readouterr().out.splitlines() if re.match(r"  [\w.]+ = ", line)]
        assert "  output_dir = ''  (a string) – " in "\n".join(keys), command
        assert all(len(line) <= 160 for line in keys), command


# --- 4. presets shipped in the package, found by name


def test_presets_are_in_the_package_and_found_by_name(tmp_path, monkeypatch):
    shipped = importlib.resources.files("grpolab") / "configs"
    assert sorted(Path(entry.name).stem for entry in shipped.iterdir() if entry.name.endswith(".yaml")) == PRESETS
    assert set(PRESETS) >= {"dapo", "dr_grpo", "grpo", "gspo", "r1_zero"}
    monkeypatch.chdir(tmp_path)  # found from any folder
    dapo = load_config(config_file("dapo")).grpo
    assert (dapo.eps_high, dapo.aggregation, dapo.dynamic_sampling) == (0.28, "token", True)
    Path("dapo").write_text("grpo:\n  beta: 0.5\n")  # a file of that name wins
    assert config_file("dapo") == "dapo" and load_config(config_file("dapo")).grpo.beta == 0.5


def test_train_takes_a_preset_by_name(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr("grpolab.training.trainer.train", seen.append)
    assert main(["train", "gspo", "model=tiny-random", f"output_dir={tmp_path}/run"]) == 0
    assert seen[0].grpo.ratio_level == "sequence" and seen[0].output_dir == f"{tmp_path}/run"


def test_an_unknown_preset_is_one_line_listing_the_presets(capsys):
    assert main(["train", "dapo2"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    presets = ", ".join(PRESETS)
    assert line == f"grpolab train: error: config: 'dapo2' is neither a file nor a preset (presets: {presets})"


def test_package_data_names_every_preset():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["grpolab"]
    for preset in PRESETS:
        assert any(fnmatch.fnmatch(f"configs/{preset}.yaml", pattern) for pattern in patterns), preset


def test_a_built_wheel_holds_the_presets(tmp_path):
    pytest.importorskip("setuptools", minversion="68")  # built without isolation: nothing is downloaded
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "grpolab", source / "grpolab", ignore=shutil.ignore_patterns("__pycache__"))
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-cache-dir", "-q"]
    result = subprocess.run(
        [*command, "-w", "out", str(source)], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    (wheel,) = (tmp_path / "out").glob("grpolab-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"grpolab/configs/{preset}.yaml" for preset in PRESETS} <= names


# --- 5. run files readable by the group


@pytest.fixture
def umask_022():
    before = os.umask(0o022)
    yield
    os.umask(before)


class SavesFiles:
    """Stands in for a model or tokenizer: `save_pretrained` writes one file, as safetensors does (0600)."""

    def __init__(self, name: str):
        self.name = name

    def save_pretrained(self, folder, **_):
        path = Path(folder) / self.name
        path.write_text("{}")
        path.chmod(0o600)


@pytest.mark.parametrize("mask, file_mode, folder_mode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)])
def test_atomic_writes_have_plain_modes(tmp_path, mask, file_mode, folder_mode):
    import torch

    before = os.umask(mask)
    try:
        assert current_umask() == mask
        write_json_atomic(tmp_path / "eval.json", {"n": 1})
        write_text_atomic(tmp_path / "config.yaml", "a: 1\n")
        save_model_atomic(SavesFiles("model.safetensors"), SavesFiles("tokenizer.json"), tmp_path / "final")
        model = torch.nn.Linear(2, 2)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
        checkpoint = save_checkpoint(tmp_path, 1, model, optimizer, scheduler, {}, keep=1)
    finally:
        os.umask(before)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["checkpoints", "config.yaml", "eval.json", "final"]
    for path in [tmp_path / "eval.json", tmp_path / "config.yaml", *(tmp_path / "final").iterdir()]:
        assert path.stat().st_mode & 0o777 == file_mode, path
    for path in checkpoint.iterdir():
        assert path.stat().st_mode & 0o777 == file_mode, path
    for path in [tmp_path / "final", checkpoint]:
        assert path.stat().st_mode & 0o777 == folder_mode, path


def test_a_tiny_run_is_readable_by_the_group_in_a_new_folder_per_run(tmp_path, umask_022):
    """One whole run, with the default name: a folder of its own, recorded in config.yaml, every file 0644."""
    run_cli("train", *TINY, "train.max_steps=2", "train.save_every=1", "--quiet", cwd=tmp_path, check=True)
    (run,) = (tmp_path / "runs").iterdir()
    assert re.fullmatch(r"grpo-arithmetic-\d{8}-\d{6}", run.name)
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert (saved["output_dir"], saved["name"]) == (f"runs/{run.name}", run.name)
    assert list(run.glob("checkpoints/step-*/model.safetensors")) and (run / "final" / "model.safetensors").exists()
    for path in [run, *run.rglob("*")]:
        mode = path.stat().st_mode & 0o777
        assert mode == (0o755 if path.is_dir() else 0o644), f"{path}: {oct(mode)}"


# --- 6. default run folders that do not collide


@pytest.fixture
def clock(tmp_path, monkeypatch):
    """Runs start in tmp_path at a fixed time; `clock.now` moves it."""
    monkeypatch.chdir(tmp_path)

    class Clock:
        now = "20250301-142501"

    monkeypatch.setattr(time, "strftime", lambda format: Clock.now)
    return Clock


def test_the_default_folder_follows_command_task_and_time(clock):
    from grpolab.stages.distill import DistillConfig
    from grpolab.stages.evaluate import EvalRunConfig
    from grpolab.stages.pipeline import PipelineConfig
    from grpolab.stages.sample import SampleConfig
    from grpolab.stages.sft import SFTConfig

    config = load_config(None, ["task=jsonl:data/x.jsonl"])
    assert config.run_dir() == Path("runs/grpo-jsonl-x-20250301-142501")
    clock.now = "20250301-142502"
    assert config.run_dir() == Path("runs/grpo-jsonl-x-20250301-142501")  # chosen once
    saved = yaml.safe_load(to_yaml(config))
    assert (saved["output_dir"], saved["name"]) == ("runs/grpo-jsonl-x-20250301-142501", "grpo-jsonl-x-20250301-142501")
    for root, name in [
        (EvalRunConfig, "eval-gsm8k"),
        (SampleConfig, "sample-gsm8k"),
        (DistillConfig, "distill-gsm8k"),
        (PipelineConfig, "pipeline-gsm8k"),
        (SFTConfig, "sft"),  # no task key
    ]:
        config = root()
        if hasattr(config, "task"):
            config.task = "gsm8k"
        assert config.run_dir() == Path(f"runs/{name}-20250301-142502"), root


def test_a_run_started_in_the_same_second_gets_a_folder_of_its_own(clock):
    first = Config().run_dir()
    first.mkdir(parents=True)
    second = Config().run_dir()
    assert second == Path(f"{first}-2") and Config().run_dir() == Path(f"{first}-2")  # -2 not made yet
    second.mkdir()
    assert Config().run_dir() == Path(f"{first}-3")


def test_an_explicit_name_or_output_dir_is_used_as_given(clock, tmp_path):
    assert load_config(None, ["name=exp"]).run_dir() == Path("runs/exp")
    assert load_config(None, ["name=exp-{task}"]).run_dir() == Path("runs/exp-arithmetic")
    config = load_config(None, [f"output_dir={tmp_path}/mine"])
    assert config.run_dir() == tmp_path / "mine" and config.name == "mine"  # the name trackers show
    assert dataclasses.replace(Config(), output_dir="a/b", name="n").run_dir() == Path("a/b")


@pytest.mark.parametrize(
    "task, folder",
    [
        ("arithmetic", "arithmetic"),
        ("jsonl:data/x.jsonl", "jsonl-x"),
        ("jsonl:data/x.jsonl,question=q,answer=a", "jsonl-x"),
        ("hf:openai/gsm8k,split=test", "hf-gsm8k"),
        ("gsm8k:/abs/path/train.jsonl", "gsm8k-train"),
        ("my_tasks.py:Sorting", "my_tasks-Sorting"),
        ("../../etc", "etc"),
    ],
)
def test_task_folder_names(task, folder):
    assert task_folder_name(task) == folder


@given(st.text())
def test_a_task_folder_name_is_always_one_safe_folder(task):
    name = task_folder_name(task)
    assert re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", name) and len(name) <= 48


def test_resume_without_a_run_is_refused_in_one_line(clock, capsys):
    assert main(["train", "resume=true", "model=tiny-random"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("grpolab train: error: resume: say which run to continue: output_dir=RUN_DIR or name=")
    with pytest.raises(ConfigError, match="resume"):
        load_config(None, ["resume=true", "name=x-{time}"]).run_dir()
    assert not Path("runs").exists()


def test_resume_takes_the_folder_it_is_given(clock, monkeypatch):
    run = Path("runs/old")
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(to_yaml(load_config(None, ["model=tiny-random", "name=old"])))
    seen = []
    monkeypatch.setattr("grpolab.training.trainer.train", seen.append)
    assert main(["train", "--resume", str(run), "train.max_steps=5"]) == 0
    assert (seen[0].output_dir, seen[0].resume, seen[0].train.max_steps) == (str(run), True, 5)
    assert main(["train", "resume=true", "name=old"]) == 0
    assert seen[1].run_dir() == run


def test_nproc_hands_every_rank_the_folder_chosen_once(clock, monkeypatch):
    launched = []
    monkeypatch.setattr("grpolab.commands.train.launch_torchrun", lambda nproc, args: launched.append(args.args))
    monkeypatch.setattr("grpolab.training.trainer.train", lambda config: None)
    assert main(["train", "model=tiny-random", "--nproc", "2"]) == 0
    assert launched == [["model=tiny-random", "output_dir=runs/grpo-arithmetic-20250301-142501"]]
