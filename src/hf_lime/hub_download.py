"""Where a saved editor's files come from: a local folder, or a Hub snapshot of the editor's files only."""

from __future__ import annotations

from pathlib import Path

from .editor_folder import ADAPTER_CONFIG, ADAPTER_WEIGHTS, EDITOR_METADATA, TOKENIZER_FILES

# What `snapshot_download` fetches. `adapter_model.bin` is fetched (never opened) only to say why a repo that has
# nothing but a pickle is refused.
HUB_ALLOW_PATTERNS = [ADAPTER_CONFIG, ADAPTER_WEIGHTS, EDITOR_METADATA, "README.md", "adapter_model.bin"]
HUB_ALLOW_PATTERNS += list(TOKENIZER_FILES)


def resolve_editor_folder(
    repo_id_or_path: str | Path,
    revision: str | None = None,
    token: str | bool | None = None,
    cache_dir: str | Path | None = None,
    local_files_only: bool | None = None,
    subfolder: str | None = None,
) -> Path:
    """
    The local folder of a saved editor: `repo_id_or_path` itself when it is a folder, else a Hub snapshot of the
    editor's files only (`HUB_ALLOW_PATTERNS`: adapter, metadata, model card, tokenizer; never other weights). With
    `subfolder`, the editor lies in that subfolder of the folder or repo.

    Hub failures that mean "there is no such editor here" (unknown repo or revision, no access, not cached while
    offline, invalid repo id) become a `ValueError` naming the repo; the hub's exception is its `__cause__`.
    Other errors (e.g. a server error) propagate unchanged.
    """
    if subfolder is not None and (not isinstance(subfolder, str) or ".." in Path(subfolder).parts
                                  or Path(subfolder).is_absolute()):  # fmt: skip
        raise ValueError(f"`subfolder` must be a relative path inside the repo, got {subfolder!r}.")
    path = Path(repo_id_or_path).expanduser()
    if path.is_dir():
        inner = path / subfolder if subfolder else path
        if not inner.is_dir():
            raise ValueError(f"{str(path)!r} has no subfolder {subfolder!r}.")
        return inner
    if path.exists():
        raise ValueError(f"{str(repo_id_or_path)!r} is a file; pass the folder of a saved editor or a Hub repo id.")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    repo_id = str(repo_id_or_path)
    try:
        folder = snapshot_download(
            repo_id,
            revision=revision,
            token=token,
            cache_dir=cache_dir,
            local_files_only=bool(local_files_only),
            allow_patterns=[f"{subfolder}/{p}" for p in HUB_ALLOW_PATTERNS] if subfolder else HUB_ALLOW_PATTERNS,
        )
    except RevisionNotFoundError as err:
        raise ValueError(f"Revision {revision!r} does not exist in the Hub repo {repo_id!r}.") from err
    except RepositoryNotFoundError as err:
        raise ValueError(
            f"No editor {repo_id!r}: it is neither a local folder nor a Hub repo you can access (if it is private "
            "or gated, pass `token=`)."
        ) from err
    except LocalEntryNotFoundError as err:
        raise ValueError(
            f"The editor {repo_id!r} (revision {revision or 'main'!r}) is not in the local Hub cache and the Hub was "
            "not reachable (offline mode `HF_HUB_OFFLINE=1`, `local_files_only=True`, or no connection)."
        ) from err
    except HFValidationError as err:
        raise ValueError(f"{repo_id!r} is neither an existing local folder nor a valid Hub repo id: {err}") from err
    folder = Path(folder) / subfolder if subfolder else Path(folder)
    if not folder.is_dir():  # nothing matched the allowed files
        raise ValueError(f"No {ADAPTER_CONFIG} in the Hub repo {repo_id!r}: it holds no saved LIME editor.")
    return folder
