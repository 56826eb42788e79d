"""The fake Hub (tests/hub_server.py): real huggingface_hub calls over loopback HTTP, and the offline cache helpers."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from hub_server import (
    HubServer,
    git_blob_sha1,
    hub_client_env,
    hub_offline_mode,
    populate_cache,
    running_hub,
)
from huggingface_hub import (
    HfApi,
    ModelHubMixin,
    constants,
    create_branch,
    create_repo,
    hf_hub_download,
    list_repo_commits,
    list_repo_files,
    list_repo_tree,
    model_info,
    snapshot_download,
    try_to_load_from_cache,
    upload_file,
    upload_folder,
)
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.file_download import _CACHED_NO_EXIST

REPO = "hf-lime/tiny-editor"


@pytest.fixture
def hub(tmp_path):
    with running_hub(tmp_path) as server:
        yield server


def _safetensors_like(n: int = 3000) -> bytes:
    """A real safetensors layout (u64 header size, JSON header, raw little-endian floats): binary, not text."""
    data = struct.pack(f"<{n}f", *(i / 7 for i in range(n)))
    header = json.dumps({"w": {"dtype": "F32", "shape": [n], "data_offsets": [0, len(data)]}}).encode()
    return struct.pack("<Q", len(header)) + header + data


def _model_folder(path: Path, config: dict, weights: bytes) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(config))
    (path / "model.safetensors").write_bytes(weights)
    return path


def test_create_repo_exist_ok_and_conflict(hub):
    url = create_repo(REPO, token="hf_anything")
    assert (url.repo_id, url.endpoint) == (REPO, hub.endpoint)
    assert create_repo(REPO, exist_ok=True).repo_id == REPO  # the 409 body carries `url`
    with pytest.raises(HfHubHTTPError) as err:
        create_repo(REPO)
    assert err.value.response.status_code == 409
    assert list_repo_files(REPO) == [".gitattributes"]  # a new repo has an initial commit, as on the Hub
    assert [c.title for c in list_repo_commits(REPO)] == ["initial commit"]


def test_push_then_pull_is_byte_identical(hub, tmp_path):
    weights = _safetensors_like()
    folder = _model_folder(tmp_path / "out", {"hidden_size": 16}, weights)
    create_repo(REPO)
    info = upload_folder(repo_id=REPO, folder_path=folder)
    assert hub.branch_history(REPO)[-1] == info.oid and len(info.oid) == 40
    assert hub.files(REPO)["model.safetensors"] == weights  # stored server side

    path = Path(hf_hub_download(REPO, "model.safetensors"))
    assert path.read_bytes() == weights
    assert path.parent.name == info.oid and path.resolve().name == git_blob_sha1(weights)
    snapshot = Path(snapshot_download(REPO))
    assert sorted(p.name for p in snapshot.iterdir()) == [".gitattributes", "config.json", "model.safetensors"]
    assert json.loads((snapshot / "config.json").read_text()) == {"hidden_size": 16}
    assert (snapshot / "model.safetensors").read_bytes() == weights
    assert f"GET /{REPO}/resolve/main/model.safetensors" in hub.requests  # a real HTTP round trip


def test_second_push_is_a_new_commit_and_old_revision_stays(hub, tmp_path):
    create_repo(REPO)
    first = upload_folder(repo_id=REPO, folder_path=_model_folder(tmp_path / "v1", {"v": 1}, b"\x00\x01" * 50)).oid
    unchanged = upload_folder(repo_id=REPO, folder_path=tmp_path / "v1").oid  # preupload oids: nothing to commit
    assert unchanged == first and len(hub.branch_history(REPO)) == 2
    second = upload_file(path_or_fileobj=b'{"v": 2}', path_in_repo="config.json", repo_id=REPO).oid

    assert second != first and hub.branch_history(REPO) == [c.commit_id for c in list_repo_commits(REPO)][::-1]
    assert model_info(REPO).sha == second and model_info(REPO, revision=first).sha == first
    assert json.loads(Path(hf_hub_download(REPO, "config.json")).read_text()) == {"v": 2}
    assert json.loads(Path(hf_hub_download(REPO, "config.json", revision=first)).read_text()) == {"v": 1}
    old = Path(snapshot_download(REPO, revision=first))
    assert old.name == first and json.loads((old / "config.json").read_text()) == {"v": 1}
    assert json.loads(Path(hf_hub_download(REPO, "config.json", revision=first[:10])).read_text()) == {"v": 1}


def test_list_files_and_tree(hub):
    create_repo(REPO)
    upload_file(path_or_fileobj=b"x", path_in_repo="sub/dir/a.txt", repo_id=REPO)
    upload_file(path_or_fileobj=b"---\nlicense: mit\n---\n# card\n", path_in_repo="README.md", repo_id=REPO)
    assert list_repo_files(REPO) == [".gitattributes", "README.md", "sub/dir/a.txt"]
    top = {(type(e).__name__, e.path) for e in list_repo_tree(REPO)}
    assert top == {("RepoFile", ".gitattributes"), ("RepoFile", "README.md"), ("RepoFolder", "sub")}
    nested = [(type(e).__name__, e.path) for e in list_repo_tree(REPO, path_in_repo="sub", recursive=True)]
    assert nested == [("RepoFolder", "sub/dir"), ("RepoFile", "sub/dir/a.txt")]
    assert "POST /api/validate-yaml" in hub.requests  # create_commit checks a README's metadata first


def test_not_found_errors_map_to_hub_exceptions(hub):
    create_repo(REPO)
    with pytest.raises(RepositoryNotFoundError):
        model_info("hf-lime/missing")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("hf-lime/missing", "config.json")
    with pytest.raises(RevisionNotFoundError):
        model_info(REPO, revision="no-such-branch")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(REPO, ".gitattributes", revision="no-such-branch")
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(REPO, "missing.json")
    # The 404 carries X-Repo-Commit, so the client records the absence in its cache.
    assert try_to_load_from_cache(REPO, "missing.json", cache_dir=hub.cache_dir) is _CACHED_NO_EXIST
    with pytest.raises(RevisionNotFoundError):
        upload_file(path_or_fileobj=b"x", path_in_repo="a.txt", repo_id=REPO, revision="no-such-branch")


def test_branches(hub):
    create_repo(REPO)
    base = upload_file(path_or_fileobj=b"main", path_in_repo="f.txt", repo_id=REPO).oid
    create_branch(REPO, branch="dev")
    dev = upload_file(path_or_fileobj=b"dev", path_in_repo="f.txt", repo_id=REPO, revision="dev").oid
    assert Path(hf_hub_download(REPO, "f.txt", revision="dev")).read_bytes() == b"dev"
    assert Path(hf_hub_download(REPO, "f.txt")).read_bytes() == b"main"
    assert hub.branch_history(REPO, "dev")[-2:] == [base, dev]
    with pytest.raises(HfHubHTTPError) as err:
        create_branch(REPO, branch="dev")
    assert err.value.response.status_code == 409


def test_offline_after_pull_uses_cache_without_server(tmp_path):
    with running_hub(tmp_path) as hub:
        create_repo(REPO)
        upload_folder(repo_id=REPO, folder_path=_model_folder(tmp_path / "out", {"a": 1}, b"\xff" * 64))
        online = Path(snapshot_download(REPO))
        config = Path(hf_hub_download(REPO, "config.json"))
        cache_dir = hub.cache_dir
        hub.stop()
        served = len(hub.requests)
        with hub_offline_mode(True):
            assert Path(snapshot_download(REPO)) == online
            assert Path(hf_hub_download(REPO, "config.json")) == config
            assert (online / "model.safetensors").read_bytes() == b"\xff" * 64
            with pytest.raises(LocalEntryNotFoundError):
                hf_hub_download(REPO, "not-downloaded.bin")
        assert len(hub.requests) == served
    with hub_offline_mode(True):  # after the fixture: nothing patched, the explicit cache still works
        assert Path(hf_hub_download(REPO, "config.json", cache_dir=cache_dir)) == config


def test_populate_cache_then_offline_loading(tmp_path):
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(_safetensors_like(10))
    cache = tmp_path / "cache"
    snapshot = populate_cache(cache, "org/cached", {"config.json": b'{"k": 3}', "sub/model.safetensors": weights})
    assert (cache / "models--org--cached" / "refs" / "main").read_text() == snapshot.name
    with hub_offline_mode(True):
        assert Path(snapshot_download("org/cached", cache_dir=cache)) == snapshot
        path = hf_hub_download("org/cached", "model.safetensors", subfolder="sub", cache_dir=cache)
        assert Path(path).read_bytes() == weights.read_bytes()
        path = hf_hub_download("org/cached", "config.json", revision=snapshot.name, cache_dir=cache)
        assert json.loads(Path(path).read_text()) == {"k": 3}
    with pytest.raises(ValueError, match="Invalid path"):
        populate_cache(cache, "org/cached", {"../escape": b""})


class _TinyEditor(ModelHubMixin):
    def __init__(self, scale: float = 1.0) -> None:
        self.scale = scale

    def _save_pretrained(self, save_directory: Path) -> None:
        (save_directory / "weights.bin").write_bytes(struct.pack("<d", self.scale))

    @classmethod
    def _from_pretrained(cls, *, model_id, revision, cache_dir, force_download, local_files_only, token, **kwargs):
        path = hf_hub_download(model_id, "weights.bin", revision=revision, cache_dir=cache_dir, token=token)
        return cls(scale=struct.unpack("<d", Path(path).read_bytes())[0])


def test_model_hub_mixin_push_and_from_pretrained(hub):
    _TinyEditor(scale=2.5).push_to_hub(REPO)
    assert {"config.json", "weights.bin", "README.md"} <= set(list_repo_files(REPO))
    loaded = _TinyEditor.from_pretrained(REPO)
    assert loaded.scale == 2.5


def test_patches_are_restored(tmp_path):
    before = (constants.ENDPOINT, constants.HF_HUB_OFFLINE, constants.HF_HUB_CACHE, os.environ.get("HF_ENDPOINT"))
    with running_hub(tmp_path) as hub:
        assert constants.ENDPOINT == hub.endpoint and HfApi().endpoint == hub.endpoint
        assert constants.HF_HUB_OFFLINE is False and constants.HF_HUB_CACHE == str(hub.cache_dir)
    after = (constants.ENDPOINT, constants.HF_HUB_OFFLINE, constants.HF_HUB_CACHE, os.environ.get("HF_ENDPOINT"))
    assert after == before
    with pytest.raises(urllib.error.URLError):  # stopped: the port no longer answers
        urllib.request.urlopen(f"{hub.endpoint}/api/models/{REPO}", timeout=5)


def test_raw_protocol_details(tmp_path):
    with HubServer(tmp_path / "srv") as hub:
        hub.create_repo(REPO)
        head = urllib.request.Request(f"{hub.endpoint}/{REPO}/resolve/main/.gitattributes", method="HEAD")
        with urllib.request.urlopen(head, timeout=10) as response:
            headers = response.headers
        content = hub.files(REPO)[".gitattributes"]
        assert headers["ETag"] == f'"{git_blob_sha1(content)}"'
        assert headers["X-Repo-Commit"] == hub.branch_history(REPO)[-1]
        assert int(headers["Content-Length"]) == len(content)
        body = json.dumps({"name": REPO.split("/")[1], "organization": REPO.split("/")[0]}).encode()
        create = urllib.request.Request(f"{hub.endpoint}/api/repos/create", data=body, method="POST")
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(create, timeout=10)
        assert err.value.code == 409 and json.loads(err.value.read())["url"] == f"{hub.endpoint}/{REPO}"
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"{hub.endpoint}/{REPO}/resolve/main/nope.bin", timeout=10)
        assert err.value.headers["X-Error-Code"] == "EntryNotFound"
        escape = json.dumps({"name": "x", "organization": ".."}).encode()  # repo ids map to paths: no escaping
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(urllib.request.Request(f"{hub.endpoint}/api/repos/create", data=escape), timeout=10)
        assert err.value.code == 400 and not (tmp_path / "srv" / "repos" / "x.json").exists()


def test_client_in_a_subprocess_with_hf_endpoint(tmp_path):
    code = (
        "import sys; from huggingface_hub import constants, hf_hub_download, upload_file;"
        "assert constants.ENDPOINT == sys.argv[1], constants.ENDPOINT;"
        f"upload_file(path_or_fileobj=b'sub', path_in_repo='s.txt', repo_id='{REPO}');"
        f"print(open(hf_hub_download('{REPO}', 's.txt'), 'rb').read().decode())"
    )
    with HubServer(tmp_path / "srv") as hub:
        hub.create_repo(REPO)
        env = hub_client_env(hub.endpoint, cache_dir=tmp_path / "home" / "hub")
        run = subprocess.run(
            [sys.executable, "-c", code, hub.endpoint], env=env, capture_output=True, text=True, timeout=120
        )
        assert run.returncode == 0, run.stderr[-2000:]
        assert run.stdout.strip() == "sub" and hub.files(REPO)["s.txt"] == b"sub"
    assert (tmp_path / "home" / "hub" / f"models--{REPO.replace('/', '--')}").is_dir()


def test_transformers_push_to_hub_and_from_pretrained(hub):
    from transformers import AutoModel, BertConfig, BertModel

    config = BertConfig(
        vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
    )
    model = BertModel(config).eval()
    model.push_to_hub(REPO)
    assert {"config.json", "model.safetensors"} <= set(list_repo_files(REPO))
    loaded = AutoModel.from_pretrained(REPO).eval()
    for (name, expected), actual in zip(model.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert (expected == actual).all(), name
