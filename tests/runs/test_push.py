"""The model card of a real (tiny-random) training run, and `grpolab push` against a stand-in for the hub:
tests never reach huggingface.co, so HfApi is replaced by a recorder that copies the uploaded folder into a
local folder. Its calls are checked against the real HfApi's signatures, so a renamed argument still fails."""

from __future__ import annotations

import inspect
import json
import shutil
from types import SimpleNamespace

import huggingface_hub
import pytest
import yaml

from grpolab.cli import main
from tests.conftest import run_cli


class FakeHub:
    """HfApi as far as `grpolab push` uses it; `calls` and `target` say what would have been uploaded."""

    calls: list = []
    target = None
    error: Exception | None = None

    def __init__(self, **kwargs):
        inspect.signature(huggingface_hub.HfApi).bind(**kwargs)
        FakeHub.calls.append(("HfApi", kwargs))

    def create_repo(self, *args, **kwargs):
        inspect.signature(huggingface_hub.HfApi.create_repo).bind(self, *args, **kwargs)
        FakeHub.calls.append(("create_repo", (args, kwargs)))
        if FakeHub.error is not None:
            raise FakeHub.error
        return f"https://huggingface.co/{args[0]}"

    def upload_folder(self, **kwargs):
        inspect.signature(huggingface_hub.HfApi.upload_folder).bind(self, **kwargs)
        FakeHub.calls.append(("upload_folder", kwargs))
        shutil.copytree(kwargs["folder_path"], FakeHub.target, dirs_exist_ok=True)


@pytest.fixture
def hub(tmp_path, monkeypatch):
    monkeypatch.setattr(FakeHub, "calls", [])
    monkeypatch.setattr(FakeHub, "target", tmp_path / "hub")
    monkeypatch.setattr(FakeHub, "error", None)
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHub)
    return FakeHub


def one_line_error(capsys) -> str:
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("grpolab push: error: ")
    return line


def test_training_writes_the_model_card(tiny_run):
    card = (tiny_run / "final" / "README.md").read_text()
    meta = yaml.safe_load(card.split("---\n")[1])
    assert meta["library_name"] == "transformers" and meta["tags"] == ["grpolab", "grpo"]
    assert "base_model" not in meta  # tiny-random is built in code
    assert "| base model | `tiny-random` |" in card and "| steps done | 3 of 3 |" in card
    results = json.loads((tiny_run / "eval.json").read_text())
    assert f"| before training | {results['before']['accuracy']:.3f} |" in card
    assert f"| after training | {results['after']['accuracy']:.3f} |" in card
    assert "```text\ngrpolab train model=tiny-random train.max_steps=3 " in card  # the command, via `python -m`
    assert (tiny_run / "config.yaml").read_text().rstrip("\n") in card


def test_push_uploads_final(tiny_run, hub, capsys):
    assert main(["push", str(tiny_run), "me/tiny-grpo", "private=true", "token=hf_secret"]) == 0
    assert hub.calls[0] == ("HfApi", {"token": "hf_secret"})
    assert hub.calls[1] == ("create_repo", (("me/tiny-grpo",), {"private": True, "exist_ok": True}))
    name, upload = hub.calls[2]
    assert name == "upload_folder" and upload["repo_id"] == "me/tiny-grpo"
    final = tiny_run / "final"
    assert sorted(p.name for p in hub.target.iterdir()) == sorted(p.name for p in final.iterdir())
    assert (hub.target / "README.md").read_text() == (final / "README.md").read_text()
    out = capsys.readouterr().out
    assert f"pushed {final} to https://huggingface.co/me/tiny-grpo" in out and "hf_secret" not in out


def test_push_is_public_without_a_token_by_default(tiny_run, hub):
    assert main(["push", str(tiny_run), "me/tiny-grpo"]) == 0
    assert hub.calls[0] == ("HfApi", {"token": None})  # huggingface_hub then finds HF_TOKEN or the saved login
    assert hub.calls[1][1][1]["private"] is False


def test_push_writes_a_missing_card(tiny_run, hub, tmp_path):
    run = tmp_path / "copy"
    shutil.copytree(tiny_run, run)
    (run / "final" / "README.md").unlink()
    assert main(["push", str(run), "me/tiny-grpo"]) == 0
    card = (hub.target / "README.md").read_text()
    assert "| steps done | 3 of 3 |" in card and (run / "final" / "README.md").is_file()
    assert "The command that trained it" not in card  # this process is `push`, not the training command


def test_push_refuses_a_folder_that_is_not_a_run(tiny_run, hub, tmp_path, capsys):
    for folder in [tmp_path / "missing", tmp_path, tiny_run / "final"]:
        assert main(["push", str(folder), "me/x"]) == 2
        assert "is not a run folder" in one_line_error(capsys)
    assert hub.calls == []


def test_push_refuses_a_run_without_final(tiny_run, hub, tmp_path, capsys):
    run = tmp_path / "unfinished"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("final"))
    assert main(["push", str(run), "me/x"]) == 2
    assert "has no final/ model" in one_line_error(capsys)
    assert hub.calls == []


def test_push_refuses_an_unknown_key(tiny_run, hub, capsys):
    assert main(["push", str(tiny_run), "me/x", "privat=true"]) == 2
    assert "unknown config key 'privat'" in one_line_error(capsys)


@pytest.mark.parametrize(
    "error, expected",
    [
        (ConnectionError("Name or service not known"), "ConnectionError: Name or service not known"),
        (ValueError("Repo id must use alphanumeric chars\nmore detail"), "Repo id must use alphanumeric chars"),
    ],
)
def test_a_hub_error_is_one_line(tiny_run, hub, capsys, error, expected):
    hub.error = error
    assert main(["push", str(tiny_run), "me/x"]) == 2
    line = one_line_error(capsys)
    assert "push to 'me/x' failed: " in line and expected in line


def test_a_refused_token_says_how_to_give_one(tiny_run, hub, capsys):
    class Unauthorized(OSError):  # HfHubHTTPError's shape: the HTTP response rides on the error
        response = SimpleNamespace(status_code=401)

    hub.error = Unauthorized("401 Client Error: Unauthorized for url: https://huggingface.co/api/repos/create")
    assert main(["push", str(tiny_run), "me/x"]) == 2
    line = one_line_error(capsys)
    assert "401 Client Error" in line and "token=..." in line and "hf auth login" in line


def test_push_through_the_real_client_offline(tiny_run):
    """The real huggingface_hub, told it is offline: its refusal is one line, no traceback, nothing sent."""
    result = run_cli("push", str(tiny_run), "me/x", env={"HF_HUB_OFFLINE": "1"}, timeout=120)
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("grpolab push: error: push to 'me/x' failed: ") and "offline" in line
