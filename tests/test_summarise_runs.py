"""The grid tools on synthetic run files: `benchmarks/summarise_runs.py` (tables per configuration, paired claims per
seed and pooled over seeds, the sequence locality protocol kept apart) and `benchmarks/reproduce.py` (run ids, the
reuse of a trained editor, the configurations' adapters)."""

from __future__ import annotations

import gzip
import importlib.util
import json
import sys

import pytest
import torch
from conftest import REPO_ROOT

from hf_lime.metrics import compute_xl_edit_metrics


def _benchmark_module(name: str):
    """Import `benchmarks/<name>.py` (with `benchmarks/` on the path for its own imports) for the tests of a module."""
    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module
    sys.path.remove(str(REPO_ROOT / "benchmarks"))


@pytest.fixture(scope="module")
def summarise_runs():
    yield from _benchmark_module("summarise_runs")


def _records(transfer_hits: int, n_facts: int = 10) -> dict:
    """Edits of `n_facts` facts made in en and scored in en and fr: every en edit holds, `transfer_hits` fr ones."""
    records = {k: [] for k in ("predictions", "references", "edit_ids", "edit_languages", "eval_languages", "kinds",
                               "group_ids")}  # fmt: skip
    for fact in range(n_facts):
        for language, hit in (("en", True), ("fr", fact < transfer_hits)):
            records["predictions"].append("new" if hit else "old")
            records["references"].append("new")
            records["edit_ids"].append(f"en:f{fact}")
            records["edit_languages"].append("en")
            records["eval_languages"].append(language)
            records["kinds"].append("edit")
            records["group_ids"].append(f"f{fact}")
    return records


def _write(folder, config: str, seed: int, transfer_hits: int, locality: str = "target", variant=None) -> None:
    editor, training, mask = config.split("-")
    suffix = (f"-{variant}" if variant else "") + ("-seqloc" if locality == "sequence" else "")
    run_id = f"mlama-{config}-seed{seed}{suffix}"
    records = _records(transfer_hits)
    metrics = compute_xl_edit_metrics(**records)
    summary = {"id": run_id, "dataset": "mlama", "editor": editor, "training": training, "mask": mask, "seed": seed,
               "locality": locality, "variant": variant, "episodes": 10, "n_facts": 10,
               "metrics": metrics}  # fmt: skip
    (folder / f"{run_id}.json").write_text(json.dumps(summary, default=float))
    with gzip.open(folder / f"{run_id}.records.json.gz", "wt", encoding="utf-8") as handle:
        json.dump(records, handle)


def test_claims_per_seed_and_pooled_and_protocols_apart(summarise_runs, tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    for seed, (mono, multi) in enumerate([(2, 6), (3, 8), (2, 7)]):
        _write(runs, "mend-monolingual-off", seed, mono)
        _write(runs, "mend-all-off", seed, multi)
    _write(runs, "mend-monolingual-off", 0, 5, locality="sequence")
    _write(runs, "mend-all-off", 0, 5, locality="sequence")
    _write(runs, "mend-all-off", 0, 9, variant="cedit0.1")  # a recipe variant: paired only with its own variant
    text = summarise_runs.summarise(runs, tmp_path, bootstrap=200).read_text()
    claim = "(b) cross-lingual training raises transfer (MEND)"
    rows = [line for line in text.splitlines() if line.startswith(f"| {claim}") or line.startswith(f"| **{claim}")]
    assert [row.split(" | ")[1:3] for row in rows] == [["mlama", "0"], ["mlama", "1"], ["mlama", "2"],
                                                       ["mlama", "pooled (3)"], ["mlama/seqloc", "0"]]  # fmt: skip
    assert "+0.400" in rows[0] and "+0.500" in rows[1] and "+0.500" in rows[2]
    # pooled: mean difference 0.467, seed interval 0.467 ± 4.303 · 0.0577 / √3 = [+0.323, +0.610]
    assert "+0.467" in rows[3] and "over seeds [+0.323, +0.610]" in rows[3] and rows[3].endswith("| holds |")
    assert "+0.000" in rows[4] and "not shown" in rows[4]
    assert "| mlama/seqloc | mend-all-off | 1 |" in text and "| mlama | mend-all-off | 3 |" in text
    assert "| mlama/cedit0.1 | mend-all-off | 1 |" in text  # its own row; no claim pairs it (no cedit0.1 baseline)
    # the figure beside summary.md shows one headline per claim and group: the pooled entry, and the single seed of
    # a group with one seed
    assert "![the claims" in text and (tmp_path / "claims.png").stat().st_size > 0
    entries = summarise_runs.claim_results(summarise_runs.load_runs(runs), runs, bootstrap=50)
    shown = [(e["dataset"], e["seed"]) for e in summarise_runs.headline(entries)]
    assert shown == [("mlama", "pooled (3)"), ("mlama/seqloc", "0")]


def test_a_pooled_claim_needs_the_seeds_to_agree(summarise_runs):
    assert summarise_runs.seed_interval([0.1, 0.1, 0.1]) == pytest.approx((0.1, 0.1))
    low, high = summarise_runs.seed_interval([0.4, 0.5])  # two seeds: t(1) = 12.7, a wide interval
    assert low < 0 < high
    result = {"baseline": 0.2, "candidate": 0.6, "difference": 0.4, "ci": (0.3, 0.5)}
    row = summarise_runs._row("c", "d", "pooled (2)", "m", result, 1, (low, high))
    assert row.endswith("| not shown (the interval over seeds contains 0) |")
    assert summarise_runs._row("c", "d", "pooled (3)", "m", result, 1, (0.1, 0.7)).endswith("| holds |")
    assert summarise_runs.judge(result, -1) == "reversed"  # a claim that predicts a decrease
    assert summarise_runs.judge(result, 1, (-0.1, 0.7)) == "not shown (the interval over seeds contains 0)"
    assert summarise_runs.judge(result, 1, (-0.7, -0.1)) == "not shown (reversed over seeds)"
    unshown = {**result, "ci": (-0.1, 0.5)}  # not shown over facts: the seeds cannot make it hold
    assert summarise_runs.judge(unshown, 1, (0.1, 0.7)) == "not shown (interval contains 0)"


@pytest.fixture(scope="module")
def reproduce():
    yield from _benchmark_module("reproduce")


def test_sequence_runs_reuse_the_target_runs_best_editor(reproduce, tmp_path):
    from types import SimpleNamespace

    configs = ["mend-all-off", "ft_tuned-untrained-off"]
    args = SimpleNamespace(datasets=["mlama"], configs=configs, seeds=[0], locality="sequence", variant=None,
                           reading="lenient", runs_dir=str(tmp_path / "runs"), preserve_weight=None,
                           output_dir=str(tmp_path / "out"))  # fmt: skip
    runs = reproduce.grid(args)
    assert [r["id"] for r in runs] == ["mlama-mend-all-off-seed0-seqloc", "mlama-ft_tuned-untrained-off-seed0-seqloc"]
    assert {r["locality"] for r in runs} == {"sequence"}
    assert reproduce.trained_editor(runs[0], args) is None  # no target-protocol run yet: it would train
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "mlama-mend-all-off-seed0.json").write_text(
        json.dumps({"best_checkpoint": "checkpoint-800", "episodes": 1200})
    )
    assert reproduce.trained_editor(runs[0], args) is None  # the checkpoint is not on disk
    folder = tmp_path / "out" / "mlama-mend-all-off-seed0" / "checkpoints" / "checkpoint-800"
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text("{}")
    assert reproduce.trained_editor(runs[0], args) == {"path": folder, "episodes": 1200}
    assert reproduce.trained_editor(runs[1], args) is None  # fine-tuning has nothing to reuse
    args.locality = "target"
    assert [r["id"] for r in reproduce.grid(args)][0] == "mlama-mend-all-off-seed0"
    args.variant = "cedit0.1"
    assert [r["id"] for r in reproduce.grid(args)][0] == "mlama-mend-all-off-seed0-cedit0.1"
    args.reading = "strict"  # whole-vocabulary answers and locality in parts: ids of their own
    assert [r["id"] for r in reproduce.grid(args)][0] == "mlama-mend-all-off-seed0-cedit0.1-strict"
    assert {r["reading"] for r in reproduce.grid(args)} == {"strict"}
    args.variant = "c edit/0.1"
    with pytest.raises(ValueError, match="--variant"):
        reproduce.grid(args)


def test_a_preserve_reading_reuses_the_trained_editor_and_never_trains(reproduce, tmp_path):
    from types import SimpleNamespace

    args = SimpleNamespace(datasets=["mlama"], configs=["mend-all-off"], seeds=[0], locality="target", variant=None,
                           reading="strict", runs_dir=str(tmp_path / "runs"), preserve_weight=0.3,
                           output_dir=str(tmp_path / "out"))  # fmt: skip
    with pytest.raises(ValueError, match="name the reading with --variant"):
        reproduce.grid(args)
    args.variant = "preserve0.3"
    run = reproduce.grid(args)[0]
    assert run["id"] == "mlama-mend-all-off-seed0-preserve0.3-strict"
    with pytest.raises(FileNotFoundError, match="reads the editor of mlama-mend-all-off-seed0-strict"):
        reproduce.trained_editor(run, args)
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "mlama-mend-all-off-seed0-strict.json").write_text(
        json.dumps({"best_checkpoint": "checkpoint-400", "episodes": 800})
    )
    folder = tmp_path / "out" / "mlama-mend-all-off-seed0-strict" / "checkpoints" / "checkpoint-400"
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text("{}")
    assert reproduce.trained_editor(run, args) == {"path": folder, "episodes": 800}


def test_the_two_readings_differ_on_masked_lm_only(reproduce):
    """XNLI's grid ran before `--reading strict` existed: its classifier edits were read with the options the strict
    reading gives a classifier (argmax over the labels, locality at the label, distinct facts), so those files are
    its strict reading; on mLAMA the readings differ (scoring, locality parts, neighbours)."""
    from types import SimpleNamespace

    readings = ("strict", "lenient")
    args = SimpleNamespace(n_edits=25, n_retain=5, bootstrap=10, n_neighbours=5)
    run = {"seed": 0, "editor": "mend", "locality": "target"}
    xnli = {"task": "seq_cls", "languages": ["en"], "new_target": "gold", "scoring": "open"}
    mlama = {"task": "masked_lm", "languages": ["en"], "new_target": "alternative", "scoring": "candidates",
             "candidates": {}}  # fmt: skip
    read = {
        name: {reading: reproduce.evaluation_options({**run, "reading": reading}, task, args) for reading in readings}
        for name, task in (("xnli", xnli), ("mlama", mlama))
    }
    assert read["xnli"]["strict"] == read["xnli"]["lenient"]
    assert read["xnli"]["strict"]["scoring"] == "open" and read["xnli"]["strict"]["distinct_facts"]
    assert read["mlama"]["strict"]["scoring"] == "open" != read["mlama"]["lenient"]["scoring"]
    assert read["mlama"]["strict"]["n_neighbours"] == 5 and "n_neighbours" not in read["mlama"]["lenient"]


def test_configurations_parse_and_build_their_adapters(reproduce):
    from types import SimpleNamespace

    args = SimpleNamespace(edit_lr_init=3e-4)
    ke_ref = reproduce.lime_config(reproduce.parse_config("ke_ref-all-language"), ["en", "fr"], args)
    assert (ke_ref.editor, ke_ref.ke_conditioner, ke_ref.ke_hidden_dim) == ("ke", "lstm", 512)
    assert ke_ref.use_lime_mask
    shared = reproduce.lime_config(reproduce.parse_config("mend-all-shared"), ["en", "fr"], args)
    assert shared.mask_scope == "shared" and shared.mend_center and shared.edit_lr_init == 3e-4
    ke = reproduce.lime_config(reproduce.parse_config("ke-all-off"), ["en", "fr"], args)
    assert (ke.editor, ke.ke_conditioner, ke.edit_lr_init) == ("ke", "pooled", reproduce.KE_EDIT_LR_INIT)
    with pytest.raises(ValueError, match="Unknown configuration"):
        reproduce.parse_config("rome-all-off")
    with pytest.raises(ValueError, match="<editor>-<training>-<mask>"):
        reproduce.parse_config("ft_reference")  # the editor alone: a clear error, not a failed unpacking


def test_the_untrained_twin_has_the_trained_step_sizes_and_the_networks_the_training_started_from(reproduce, tmp_path):
    from types import SimpleNamespace

    from peft import get_peft_model
    from transformers import BertConfig, BertForMaskedLM

    from hf_lime import LimeConfig

    BertForMaskedLM(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                               intermediate_size=32)).save_pretrained(tmp_path / "base")  # fmt: skip
    task = {"auto": BertForMaskedLM, "folder": str(tmp_path / "base")}
    config = LimeConfig(languages=["en", "fr"], editor="mend", use_lime_mask=True, mend_center=True)
    trained = get_peft_model(BertForMaskedLM.from_pretrained(task["folder"]), config)
    with torch.no_grad():
        for parameter in trained.parameters():
            parameter.add_(1.0)  # "training" moved every parameter
    trained.save_pretrained(tmp_path / "checkpoint-100")
    args = SimpleNamespace(runs_dir=str(tmp_path / "runs"))
    run = {"id": "mlama-mend-twin-language-seed0-strict", "mask": "language", **reproduce.parse_config(
        "mend-twin-language")}  # fmt: skip
    with pytest.raises(FileNotFoundError, match="control of mlama-mend-all-language-seed0-strict: run that first"):
        reproduce.untrained_twin_of(run, BertForMaskedLM.from_pretrained(task["folder"]), task, args)
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "mlama-mend-all-language-seed0-strict.json").write_text(
        json.dumps({"editor_dir": str(tmp_path / "checkpoint-100")})
    )
    torch.manual_seed(7)
    twin, source = reproduce.untrained_twin_of(run, BertForMaskedLM.from_pretrained(task["folder"]), task, args)
    torch.manual_seed(7)
    fresh = get_peft_model(BertForMaskedLM.from_pretrained(task["folder"]), config).state_dict()
    assert source == str(tmp_path / "checkpoint-100")
    kept = [name for name in fresh if any(part in name for part in ("edit_lrs", "lime_masks", "x_mean"))]
    networks = [name for name in fresh if "lime_editor" in name and name not in kept]
    assert kept and networks
    state, trained_state = twin.state_dict(), trained.state_dict()
    assert all(torch.equal(state[name], trained_state[name]) for name in kept)
    assert all(torch.equal(state[name], fresh[name]) for name in networks)
    with pytest.raises(ValueError, match="no networks to leave untrained"):
        reproduce.parse_config("ft_tuned-twin-off")


def test_an_interrupted_training_resumes_from_its_last_checkpoint(reproduce, tmp_path):
    run_dir = tmp_path / "mlama-mend-all-off-seed0"
    assert reproduce.resume_point(run_dir) is None  # never started
    (run_dir / "checkpoints").mkdir(parents=True)
    assert reproduce.resume_point(run_dir) is None  # started, no checkpoint written yet
    for step in (100, 300, 200):
        (run_dir / "checkpoints" / f"checkpoint-{step}").mkdir()
    (run_dir / "checkpoints" / "checkpoint-1000-partial").mkdir()  # not a checkpoint name
    assert reproduce.resume_point(run_dir) == str(run_dir / "checkpoints" / "checkpoint-300")


def test_any_two_runs_on_the_same_edits_compare_per_seed_and_pooled(summarise_runs, tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    for seed, (mono, multi) in enumerate([(2, 6), (3, 8)]):
        _write(runs, "mend-monolingual-off", seed, mono)
        _write(runs, "mend-all-off", seed, multi, variant="cedit0.1")  # another variant: pairs all the same
    base = [f"mlama-mend-monolingual-off-seed{seed}" for seed in (0, 1)]
    cand = [f"mlama-mend-all-off-seed{seed}-cedit0.1" for seed in (0, 1)]
    rows = summarise_runs.compare_runs(runs, base, cand, metrics=("transfer",), bootstrap=200)[2:]
    assert len(rows) == 3 and rows[0].startswith("| transfer | mlama-mend-all-off-seed0-cedit0.1 vs mlama-mend-mon")
    assert "| 0.200 | 0.600 | +0.400 [" in rows[0] and rows[0].endswith("| candidate higher |")
    assert "| 0.300 | 0.800 | +0.500 [" in rows[1]
    assert rows[2].startswith("| **transfer** | pooled (2) | 0.250 | 0.700 | +0.450 [") and "over seeds [" in rows[2]
    with pytest.raises(ValueError, match="no run file"):
        summarise_runs.compare_runs(runs, ["mlama-mend-all-off-seed0"], cand[:1])
    with pytest.raises(ValueError, match="as many"):
        summarise_runs.compare_runs(runs, base, cand[:1])
    with pytest.raises(ValueError, match="same edits"):  # seed 0's edits against seed 1's
        summarise_runs.compare_runs(runs, base[:1], cand[1:], metrics=("transfer",), bootstrap=50)
