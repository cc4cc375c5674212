"""`grpolab push RUN_DIR REPO_ID [private=true] [token=...]`: upload a run's final/ model to the Hugging Face hub.

final/ is a plain transformers folder with its model card (README.md, written at the end of training, or here
when it is missing), so the hub repo is the folder as it is. The repo is created when it does not exist;
`private` only applies then (the hub keeps an existing repo's visibility). The token is `token=`, else the
one huggingface_hub finds itself (HF_TOKEN, or `hf auth login`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from grpolab.commands.common import add_stage_parser
from grpolab.config import load_config
from grpolab.errors import UserError


@dataclass
class PushConfig:
    private: bool = False  # create the repo private (an existing repo keeps its visibility)
    token: str = ""  # a hub token with write access (empty: HF_TOKEN or the saved login)


def register(subparsers) -> None:
    add_stage_parser(
        subparsers,
        "push",
        PushConfig,
        "upload a run's final/ model (and its model card) to the Hugging Face hub",
        "Upload RUN_DIR/final to the hub repo REPO_ID (created when missing), with its model card.",
        positionals=(
            ("run_dir", {"metavar": "RUN_DIR", "help": "a run folder written by grpolab train"}),
            ("repo_id", {"metavar": "REPO_ID", "help": "the hub repo, owner/name"}),
        ),
        metavar="key=value",
    ).set_defaults(func=run)


def final_folder(run_dir: Path) -> Path:
    """RUN_DIR/final, refused in one line when RUN_DIR is not a finished run."""
    from grpolab.runs.folder import holds_run

    if not run_dir.is_dir() or not holds_run(run_dir):
        raise UserError(f"{str(run_dir)!r} is not a run folder (name the folder grpolab train wrote, not final/)")
    final = run_dir / "final"
    if not (final / "config.json").is_file():
        raise UserError(f"{str(run_dir)!r} has no final/ model (the run did not finish)")
    return final


def hub_line(error: Exception) -> str:
    """One line for a failure of the hub client; a refused token gets the ways to give one."""
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    status = getattr(getattr(error, "response", None), "status_code", None)
    hint = " (pass token=..., set HF_TOKEN or run `hf auth login`)" if status in (401, 403) else ""
    return f"{type(error).__name__}: {first}{hint}"


def upload(final: Path, repo_id: str, config: PushConfig) -> str:
    """Create the repo if needed and upload the folder; returns the repo's URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=config.token or None)
    try:
        url = api.create_repo(repo_id, private=config.private, exist_ok=True)
        api.upload_folder(repo_id=repo_id, folder_path=str(final), commit_message="Upload with grpolab push")
    # The hub client's failures (HTTP statuses, no connection, a bad repo id, no token) have different classes
    # across its releases and HTTP libraries (requests, httpx, httpx2): each one becomes one line.
    except Exception as error:
        raise UserError(f"push to {repo_id!r} failed: {hub_line(error)}") from error
    return str(url)


def run(args) -> int:
    from grpolab.report.model_card import write_model_card

    config = load_config(None, args.args, root=PushConfig)
    final = final_folder(Path(args.run_dir))
    if not (final / "README.md").is_file():
        write_model_card(final.parent)
    url = upload(final, args.repo_id, config)
    print(f"pushed {final} to {url}")
    return 0
