"""All-or-nothing folder writes: a save killed at any file-system step, concurrent writers and a reader."""

from __future__ import annotations

import json
import multiprocessing
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from hf_lime.atomic import read_folder, write_folder

FILES = ("adapter_config.json", "adapter_model.safetensors", "lime_editor.json")

CHILD = r"""
import importlib.util, os, shutil, signal, sys
from pathlib import Path

# the module alone (no torch import): the child is quick to start
spec = importlib.util.spec_from_file_location("atomic", sys.argv[4])
atomic = importlib.util.module_from_spec(spec)
spec.loader.exec_module(atomic)
write_folder = atomic.write_folder

target, version, kill_at = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
steps = {"n": 0}

def counted(function):
    def wrapper(*args, **kwargs):
        steps["n"] += 1
        if steps["n"] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return function(*args, **kwargs)
    return wrapper

for module, name in ((os, "rename"), (os, "replace"), (os, "link"), (os, "fsync"), (os, "mkdir"), (shutil, "rmtree")):
    setattr(module, name, counted(getattr(module, name)))

def write(folder):
    for name in ("adapter_config.json", "adapter_model.safetensors", "lime_editor.json"):
        steps["n"] += 1
        if steps["n"] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        (folder / name).write_text(version)

write_folder(target, write)
print("steps", steps["n"])
"""


def version_of(folder: Path) -> str:
    """The one version every editor file holds (a mix fails)."""
    with read_folder(folder) as path:
        versions = {(path / name).read_text() for name in FILES}
    assert len(versions) == 1, f"a mix of versions: {versions}"
    return versions.pop()


def run_child(target: Path, version: str, kill_at: int) -> subprocess.CompletedProcess:
    module = Path(__file__).resolve().parents[1] / "src" / "hf_lime" / "atomic.py"
    return subprocess.run([sys.executable, "-c", CHILD, str(target), version, str(kill_at), str(module)],
                          capture_output=True, text=True, timeout=120)  # fmt: skip


def test_a_save_killed_at_every_step_leaves_one_complete_version(tmp_path):
    target = tmp_path / "editor"
    done = run_child(target, "v1", kill_at=0)
    assert done.returncode == 0, done.stderr
    total = int(done.stdout.split()[-1]) + 4  # a generous bound on the steps of an overwrite
    (target / "metrics.json").write_text("{}")  # a user's file beside the editor
    seen = set()
    for kill_at in range(1, total + 1):
        done = run_child(target, "v2", kill_at)
        killed = done.returncode == -signal.SIGKILL
        version = version_of(target)  # never a mix; read_folder repairs an interrupted swap
        seen.add(version)
        assert (target / "metrics.json").read_text() == "{}"
        assert not [p for p in tmp_path.iterdir() if p.name.startswith((".editor.tmp-", ".editor.old-"))]
        if not killed:
            assert version == "v2"
        done = run_child(target, "v1", kill_at=0)  # back to v1 for the next round
        assert done.returncode == 0 and version_of(target) == "v1"
    assert seen == {"v1", "v2"}  # killed early: the old version; killed late: the new one


def test_a_failing_writer_leaves_the_previous_version(tmp_path):
    target = tmp_path / "editor"
    write_folder(target, lambda folder: [(folder / n).write_text("v1") for n in FILES])

    def broken(folder: Path) -> None:
        (folder / FILES[0]).write_text("v2")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_folder(target, broken)
    assert version_of(target) == "v1"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".editor.lock", "editor"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="not a folder"):
        write_folder(tmp_path / "file", lambda folder: None)


def _writer(target: str, version: str, rounds: int) -> None:
    for _ in range(rounds):
        write_folder(Path(target), lambda folder: [(folder / n).write_text(version) for n in FILES])


def _reader(target: str, rounds: int, queue) -> None:
    versions = []
    for _ in range(rounds):
        with read_folder(Path(target)) as path:
            versions.append(tuple((path / n).read_text() for n in FILES))
    queue.put(versions)


def test_two_writers_and_a_reader_never_see_a_mix(tmp_path):
    target = tmp_path / "editor"
    _writer(str(target), "v0", 1)
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    workers = [context.Process(target=_writer, args=(str(target), v, 40)) for v in ("a", "b")]
    reader = context.Process(target=_reader, args=(str(target), 80, queue))
    for process in (*workers, reader):
        process.start()
    reads = queue.get(timeout=300)
    for process in (*workers, reader):
        process.join(timeout=300)
        assert process.exitcode == 0
    assert len(reads) == 80 and all(len(set(read)) == 1 for read in reads)  # every read: one complete version
    assert version_of(target) in {"a", "b"}


def test_an_editor_save_is_all_or_nothing(tmp_path):
    """LimeEditor.save_pretrained goes through the same swap: a second save keeps the first's extra files."""
    import torch
    from conftest import build_model
    from peft import get_peft_model

    from hf_lime import LimeConfig, LimeEditor

    model = get_peft_model(build_model("bert-mlm"), LimeConfig(languages=["en"]))
    editor = LimeEditor(model, task="masked_lm")
    folder = editor.save_pretrained(tmp_path / "editor", base_model_name_or_path="org/tiny")
    (folder / "metrics.json").write_text(json.dumps({"hmean": 0.5}))
    with torch.no_grad():
        model.base_model.edit_lrs.fill_(0.5)
    editor.save_pretrained(folder)
    assert json.loads((folder / "metrics.json").read_text()) == {"hmean": 0.5}
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name or ".old-" in p.name]
    from helpers_tokenizers import build_wordpiece_tokenizer

    tokenizer = build_wordpiece_tokenizer()
    loaded = LimeEditor.from_pretrained(folder, base_model=build_model("bert-mlm"), tokenizer=tokenizer)
    steps = loaded.model.base_model.edit_lrs.lrs
    assert torch.allclose(steps, torch.full_like(steps, 0.5))
