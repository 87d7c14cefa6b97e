"""Where a checkpoint, tower or base model named by a flag or a config really is, or a clear error.

transformers treats anything that is not an existing folder as a hub name, so a mistyped local
path ends in a hub error ("Repo id must be in the form ...", or a connection failure offline)
that never says the folder is missing. Every loader resolves its paths here first.
"""

from __future__ import annotations

import os

from huggingface_hub import constants as hub_constants
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id


def _is_hub_name(name: str) -> bool:
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def in_hub_cache(repo_id: str) -> bool:
    """Whether the local Hugging Face cache holds a snapshot of model `repo_id`."""
    folder = os.path.join(hub_constants.HF_HUB_CACHE, "models--" + repo_id.replace("/", "--"), "snapshots")
    return os.path.isdir(folder) and bool(os.listdir(folder))


def resolve_pretrained(name_or_path: str, flag: str, relative_to: str | None = None) -> str:
    """`name_or_path` as a local folder, or as a hub name that may be loaded; else FileNotFoundError.

    A relative path is tried from the working directory, then against `relative_to` (the
    checkpoint folder that recorded it), so a checkpoint moved together with its neighbours still
    finds them. A name counts as a hub name only when it has the hub's `namespace/name` form and
    does not start inside an existing local folder (`checkpoints/tiny-phi` with a `checkpoints/`
    folder here is a missing local path, not a model on the hub); offline, it must also be cached.
    `flag` names the argument or config field in the message (e.g. "--model-path").
    """
    expanded = os.path.expanduser(str(name_or_path))
    candidates = [expanded]
    if relative_to and not os.path.isabs(expanded):
        candidates.append(os.path.join(relative_to, expanded))
    for candidate in candidates:
        if os.path.isdir(candidate):
            return candidate
        if os.path.isfile(candidate):
            raise NotADirectoryError(f"{flag} {name_or_path}: {candidate} is a file; give the folder that holds it")

    looked = " or ".join(os.path.abspath(c) for c in candidates)
    top = expanded.split("/", 1)[0]
    local_intent = not _is_hub_name(expanded) or ("/" in expanded and os.path.isdir(top))
    if local_intent:
        raise FileNotFoundError(f"{flag} {name_or_path}: no such folder (looked for {looked}); check the path")
    if in_hub_cache(expanded) or not hub_constants.HF_HUB_OFFLINE:
        return expanded
    raise FileNotFoundError(
        f"{flag} {name_or_path}: not a local folder ({looked}) and not in the local Hugging Face cache "
        f"({hub_constants.HF_HUB_CACHE}), and HF_HUB_OFFLINE is set; download it first or give a local path"
    )
