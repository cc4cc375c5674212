"""The temporary siblings that atomic writes fill and then rename into place (eval.json, config.yaml, final/,
checkpoints/step-N/), and the modes of what they hold.

Everything a run writes gets the mode a plain `open` / `mkdir` gives, 0666 / 0777 less the umask (0644 / 0755
under the usual 022): run folders live on shared storage, where the group must be able to read them, and a rename
keeps the mode. So staging files and folders are not made with tempfile's owner-only 0600 / 0700, and a staged
folder is given plain modes before it is renamed into place, since some writers stage through their own
owner-only temporary file (safetensors 0.8's `save_file` leaves 0600). Staging names are hidden and random
(`.eval.json.3f9a...`), as tempfile's are, so leftovers of a crash are known and cleaned
(`folder.clean_staging`, `checkpoint.prune_checkpoints`).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def staging_folder(parent: Path, prefix: str) -> Path:
    """A new, empty folder `parent/<prefix><random>`."""
    folder = parent / f"{prefix}{secrets.token_hex(8)}"
    folder.mkdir()  # exclusive, as mkdtemp: an existing name is an error, never shared
    return folder


def open_staging_file(path: Path):
    """A new file beside `path`, `.<name>.<random>`, open for writing UTF-8 text; returns (handle, its path)."""
    staging = path.with_name(f".{path.name}.{secrets.token_hex(8)}")
    return open(staging, "x", encoding="utf-8"), staging  # "x": exclusive creation, as mkstemp


def give_plain_modes(folder: Path) -> None:
    """`folder` and everything in it get the modes of a plain `open` / `mkdir`: 0666 / 0777 less the umask."""
    mask = current_umask()
    for path in [folder, *folder.rglob("*")]:
        if not path.is_symlink():
            os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~mask)


def current_umask() -> int:
    """This process's umask: read from /proc where Linux shows it, else set and restored (the moment between
    the two calls gives the usual 022, never a looser mask, to files other threads create)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
