"""hf_lime's meta-training step against the LiME paper's reference code (franklear/LiME), side by side.

The recipe is ../shared/docs/bench-vs-reference.md; nothing of the reference is vendored: this script drives a
checkout of it given by path, in its own venv, and hf_lime in this project's `.venv`, with the same model, data and
settings, and prints both medians, their ratio and the peak memory of every run.

Set up once (a checkout of the reference at commit cc4c411, and its venv: torch 2.13.0 CPU, transformers 4.57.x,
hydra-core 1.3, omegaconf 2.3, PyPI `higher` 0.2.1, numpy, tqdm):

    git clone https://github.com/franklear/LiME /tmp/LiME && git -C /tmp/LiME checkout cc4c411
    .venv/bin/python benchmarks/bench_vs_reference.py --setup_reference_venv outputs/bench_vs_reference/ref-venv

Measure (one thread, nothing else running; `--shape base` is the mBERT-base shape, 30 timed steps by default):

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_vs_reference.py --reference_dir /tmp/LiME \\
        --reference_venv outputs/bench_vs_reference/ref-venv --shape small --json outputs/bench_vs_reference/small.json
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_vs_reference.py --reference_dir /tmp/LiME \\
        --shape small --rounds 1 --steps 3 --warmup 1          # smoke run

What it does:

1. Builds a random `BertForMaskedLM` of the shape (small: 4 layers / 256 hidden / 4 heads / FFN 1024; base: 12 /
   768 / 12 / 3072) with the mBERT vocabulary (119,547, from ../shared/data/tokenizers), dropout 0, seed 0, once,
   with transformers 4.57 in the reference venv, under `--work_dir`/models/. Both venvs then load it and must agree
   on the token ids and a logits checksum.
2. Lays out the reference's working directory: data/mlama/ with symlinks to mLAMA 1.1 and its candidate objects
   (../shared/data) and empty `GoogleRE_objects/<lang>.json` files.
3. Runs `--rounds` rounds (4) of one fresh process per side, alternating, the order swapped every round; each
   process runs `--warmup` (3) micro-steps, then `--steps` (40 small, 30 base) timed ones, one thread. The
   reference runs its own `run.py` (`benchmarks/_reference_driver.py`: `BaseTrainer.run` replaced by a timed loop
   over its `train_step()`, `higher.patch.monkeypatch` taught the pinned fork's `in_place=True` at run time, eager
   attention, a no-op `wandb`); hf_lime runs `LimeTrainer` (`benchmarks/_ours_driver.py`). Languages en fr de zh
   ru; one edit, one update and one locality row per step; 10 steps per optimizer step.
4. Checks that both editors have the same number of parameters (13,224,966 small, 59,335,686 base) and stops if not.
5. Prints and writes (`--json`) every run's median step and peak RSS (`getrusage` in the child), each side's median
   of run medians, the speed-up (reference ÷ hf_lime), the peak-memory ratio (hf_lime ÷ reference), and the rows,
   tokens and target tokens per row that each side read (their data pipelines differ in detail).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from _vs_reference_common import (
    DEFAULT_STEPS,
    EDITOR_PARAMETERS,
    LANGUAGES,
    SHAPES,
    SIDES,
    VOCAB_SIZE,
    write_json,
)

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
REFERENCE_COMMIT = "cc4c411"
REFERENCE_REQUIREMENTS = (
    "torch==2.13.0",
    "transformers>=4.57,<4.58",
    "hydra-core>=1.3,<1.4",
    "omegaconf>=2.3,<2.4",
    "higher==0.2.1",
    "numpy",
    "tqdm",
)
DEFAULT_WORK_DIR = REPO / "outputs" / "bench_vs_reference"
DEFAULT_REFERENCE_VENV = DEFAULT_WORK_DIR / "ref-venv"
LOG_TAIL = 40  # lines of a failed child's log shown


class BenchError(SystemExit):
    """A failure with a message for the person running the benchmark (exit status 1)."""

    def __init__(self, message: str) -> None:
        super().__init__(f"bench_vs_reference: {message}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference_dir", help="A checkout of franklear/LiME (commit cc4c411); never vendored.")
    parser.add_argument(
        "--reference_venv",
        default=str(DEFAULT_REFERENCE_VENV),
        help="The reference's venv (made by --setup_reference_venv). Default: %(default)s",
    )
    parser.add_argument(
        "--setup_reference_venv",
        metavar="DIR",
        help="Create the reference's venv at DIR with pip (then measure with it if --reference_dir is given).",
    )
    parser.add_argument("--shape", choices=sorted(SHAPES), default="small")
    parser.add_argument("--rounds", type=int, default=4, help="Rounds of one run per side (order swapped each).")
    parser.add_argument("--steps", type=int, default=None, help="Timed micro-steps per run (40 small, 30 base).")
    parser.add_argument("--warmup", type=int, default=3, help="Untimed micro-steps first (>= 1).")
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of every run.")
    parser.add_argument("--data_dir", default=str(REPO.parent / "shared" / "data"), help="Holds mlama1.1/.")
    parser.add_argument(
        "--tokenizer_dir",
        default=None,
        help="The mBERT vocabulary (vocab.txt, tokenizer.json); default <data_dir>/tokenizers/"
        "bert-base-multilingual-cased.",
    )
    parser.add_argument("--work_dir", default=str(DEFAULT_WORK_DIR), help="Models, the reference's cwd, logs.")
    parser.add_argument(
        "--ours_head_dtype",
        choices=["float32", "bfloat16"],
        default="float32",
        help="hf_lime's LimeTrainingArguments.head_dtype (float32: the like-for-like comparison; the reference has "
        "no bfloat16 option).",
    )
    parser.add_argument(
        "--ours_mend_dtype",
        choices=["float32", "bfloat16"],
        default="float32",
        help="hf_lime's LimeConfig.mend_compute_dtype: the editor networks' matrix products (float32: like for like).",
    )
    parser.add_argument("--json", default=None, help="Write every run and the summary here.")
    args = parser.parse_args(argv)
    if args.steps is None:
        args.steps = DEFAULT_STEPS[args.shape]
    for name, low in (("rounds", 1), ("steps", 1), ("warmup", 1), ("threads", 1)):
        if getattr(args, name) < low:
            parser.error(f"--{name} must be >= {low}, got {getattr(args, name)}")
    if args.tokenizer_dir is None:
        args.tokenizer_dir = str(Path(args.data_dir) / "tokenizers" / "bert-base-multilingual-cased")
    if args.reference_dir is None and args.setup_reference_venv is None:
        parser.error("--reference_dir is required (a checkout of franklear/LiME), unless --setup_reference_venv")
    if args.setup_reference_venv is not None:
        args.reference_venv = args.setup_reference_venv
    return args


def round_orders(rounds: int) -> list[tuple[str, ...]]:
    """The sides' order in each round: alternating, swapped every round (reference first in round 1)."""
    return [SIDES if r % 2 == 0 else tuple(reversed(SIDES)) for r in range(rounds)]


def summarise(runs: list[dict]) -> dict:
    """Each side's median of run medians and peak RSS, the speed-up (reference ÷ ours) and the memory ratio
    (ours ÷ reference)."""
    sides = {}
    for side in SIDES:
        mine = [run for run in runs if run["side"] == side]
        if not mine:
            raise ValueError(f"no run of side {side!r}")
        medians = [statistics.median(run["steps_s"]) for run in mine]
        means = [statistics.fmean(run["steps_s"]) for run in mine]
        peaks = [run["peak_rss_mib"] for run in mine]
        sides[side] = {
            "runs": len(mine),
            "run_medians_s": medians,
            "median_s": statistics.median(medians),
            "run_means_s": means,
            "mean_s": statistics.median(means),
            "peak_rss_mib": peaks,
            "median_peak_rss_mib": statistics.median(peaks),
            "max_peak_rss_mib": max(peaks),
        }
    reference, ours = sides["reference"], sides["ours"]
    return {
        **sides,
        "speedup": reference["median_s"] / ours["median_s"],
        "speedup_of_means": reference["mean_s"] / ours["mean_s"],
        "memory_ratio": ours["median_peak_rss_mib"] / reference["median_peak_rss_mib"],
    }


def format_report(shape: str, editor_parameters: int, runs: list[dict], summary: dict) -> str:
    dims = SHAPES[shape]
    lines = [
        f"shape {shape}: {dims['num_hidden_layers']} layers x {dims['hidden_size']}, FFN {dims['intermediate_size']}, "
        f"vocabulary {VOCAB_SIZE:,}; editor {editor_parameters:,} parameters on both sides",
        "",
        f"{'round':>5}  {'side':<9}  {'steps':>5}  {'median s/step':>13}  {'peak RSS MiB':>12}",
    ]
    for run in runs:
        lines.append(
            f"{run['round']:>5}  {run['side']:<9}  {len(run['steps_s']):>5}  "
            f"{statistics.median(run['steps_s']):>13.4f}  {run['peak_rss_mib']:>12.1f}"
        )
    lines.append("")
    for side in SIDES:
        s = summary[side]
        lines.append(
            f"{side:<9}  median of {s['runs']} run medians {s['median_s']:.4f} s/step (of run means "
            f"{s['mean_s']:.4f}, optimizer steps included); "
            f"peak RSS median {s['median_peak_rss_mib']:.1f} MiB (max {s['max_peak_rss_mib']:.1f})"
        )
    ours = [run for run in runs if run.get("side") == "ours"]
    dtypes = sorted({run.get("head_dtype", "float32") for run in ours})
    mend = sorted({run.get("mend_dtype", "float32") for run in ours})
    lines.append(
        f"speed-up (reference / hf_lime): {summary['speedup']:.2f}x of medians, {summary['speedup_of_means']:.2f}x "
        f"of means (hf_lime's head products: {dtypes}, editor networks' products: {mend})"
    )
    lines.append(f"peak memory (hf_lime / reference): {summary['memory_ratio']:.2f}x")
    lines.append("")
    lines.append("rows per step, tokens and target tokens per row (first run of each side):")
    for side in SIDES:
        parts = next(run for run in runs if run["side"] == side)["parts"]
        described = "; ".join(
            f"{part} {p['rows_per_step']:g} row x {p['tokens_per_row']:.1f} tokens, {p['target_tokens_per_row']:.2f} "
            "targets"
            for part, p in parts.items()
        )
        lines.append(f"  {side:<9}  {described}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- environments
def setup_reference_venv(venv_dir: str) -> None:
    """Create the reference's venv with pip (the local CPU wheel of torch 2.13.0; PyPI `higher`, not the fork the
    reference pins: its `in_place` argument is added at run time by `_reference_driver.py`)."""
    venv = Path(venv_dir)
    print(f"creating the reference's venv at {venv} ...", flush=True)
    _check_call([sys.executable, "-m", "venv", str(venv)], "python -m venv")
    python = str(venv / "bin" / "python")
    _check_call([python, "-m", "pip", "install", "-q", *REFERENCE_REQUIREMENTS], "pip install")
    print(json.dumps(reference_environment(python)), flush=True)


def _check_call(command: list[str], what: str) -> None:
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise BenchError(f"{what} failed (exit {result.returncode}):\n{result.stdout[-3000:]}{result.stderr[-3000:]}")


ENVIRONMENT_PROBE = """
import importlib.metadata as m, json, sys
names = {names!r}
print(json.dumps({{"python": sys.version.split()[0], **{{n: m.version(n) for n in names}}}}))
for n in {modules!r}:
    __import__(n)
"""


def _probe(python: str, names: tuple[str, ...], modules: tuple[str, ...]) -> dict:
    code = ENVIRONMENT_PROBE.format(names=names, modules=modules)
    result = subprocess.run([python, "-c", code], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "no output")
    return json.loads(result.stdout.splitlines()[0])


def reference_environment(python: str) -> dict:
    """Versions in the reference's venv; a clear error if it is missing or broken."""
    if not Path(python).is_file():
        raise BenchError(
            f"no reference venv at {Path(python).parent.parent} ({python} is missing). Create it with\n"
            f"    {sys.executable} {Path(__file__).relative_to(REPO)} --setup_reference_venv DIR\n"
            "and pass --reference_venv DIR."
        )
    names = ("torch", "transformers", "hydra-core", "omegaconf", "higher", "numpy", "tqdm")
    try:
        versions = _probe(python, names, ("torch", "transformers", "hydra", "omegaconf", "higher", "numpy", "tqdm"))
    except RuntimeError as error:
        raise BenchError(
            f"the reference venv ({python}) lacks a package the reference needs: {error}. Recreate it with "
            "--setup_reference_venv DIR."
        ) from None
    if not versions["transformers"].startswith("4.57.") or not versions["torch"].startswith("2.13.0"):
        print(
            f"warning: the recipe pins torch 2.13.0 and transformers 4.57.x in the reference venv; it has torch "
            f"{versions['torch']}, transformers {versions['transformers']}",
            file=sys.stderr,
        )
    return versions


def ours_environment(python: str) -> dict:
    try:
        return _probe(python, ("torch", "transformers", "peft", "hf_lime"), ("hf_lime",))
    except RuntimeError as error:
        raise BenchError(f"hf_lime is not importable with {python}: {error}. Run `make install`.") from None


def reference_checkout(reference_dir: str) -> dict:
    path = Path(reference_dir).resolve()
    needed = ("run.py", "trainer.py", "algs/mend.py", "config/config.yaml")
    missing = [name for name in needed if not (path / name).is_file()]
    if missing:
        raise BenchError(f"{path} is not a checkout of franklear/LiME (missing {', '.join(missing)})")
    result = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True)
    commit = result.stdout.strip() if result.returncode == 0 else None
    if commit is None or not commit.startswith(REFERENCE_COMMIT):
        print(f"warning: the recipe uses the reference at {REFERENCE_COMMIT}; {path} is at {commit}", file=sys.stderr)
    return {"path": str(path), "commit": commit}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# ----------------------------------------------------------------------------------------------- runs
def child_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        OMP_NUM_THREADS=str(threads),
        MKL_NUM_THREADS=str(threads),
        PYTHONHASHSEED="0",  # the reference's sampling iterates sets of strings
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        HYDRA_FULL_ERROR="1",
    )
    env.pop("PYTHONPATH", None)
    return env


def run_child(command: list[str], log_path: Path, threads: int, cwd: Path | None = None) -> None:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w", encoding="utf-8") as log:
        code = subprocess.run(
            command, stdout=log, stderr=subprocess.STDOUT, cwd=cwd, env=child_env(threads)
        ).returncode
    if code != 0:
        tail = log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-LOG_TAIL:]
        raise BenchError(f"{' '.join(command[:3])} ... failed (exit {code}); log {log_path}:\n" + "\n".join(tail))


def ensure_model(args: argparse.Namespace, reference_python: str, work: Path) -> Path:
    """The random model of the shape, built once with transformers 4.57 (the reference venv) and reused."""
    model_dir = work / "models" / f"bert-rand-{args.shape}"
    if (model_dir / "model.safetensors").is_file() and (model_dir / "tokenizer.json").is_file():
        return model_dir
    if not (Path(args.tokenizer_dir) / "vocab.txt").is_file():
        raise BenchError(f"no mBERT vocabulary at {args.tokenizer_dir} (vocab.txt, tokenizer.json)")
    print(f"building the random {args.shape} model in {model_dir} ...", flush=True)
    staging = Path(tempfile.mkdtemp(prefix=f"bert-rand-{args.shape}-", dir=work))
    command = [reference_python, str(HERE / "_reference_driver.py"), "build-model", "--shape", args.shape,
               "--tokenizer_dir", str(Path(args.tokenizer_dir).resolve()), "--out_dir", str(staging)]  # fmt: skip
    run_child(command, work / "logs" / f"build-{args.shape}.log", args.threads)
    if model_dir.exists():  # an incomplete earlier build
        shutil.rmtree(model_dir)
    model_dir.parent.mkdir(parents=True, exist_ok=True)
    staging.rename(model_dir)
    return model_dir


def check_model_agrees(args: argparse.Namespace, pythons: dict[str, str], model_dir: Path, work: Path) -> dict:
    """Both venvs load the saved model identically: the same token ids and the same logits checksum."""
    sums = {}
    for side in SIDES:
        out = work / "results" / f"checksum-{args.shape}-{side}.json"
        driver = str(HERE / f"_{side}_driver.py")
        command = [pythons[side], driver, "checksum", "--model_dir", str(model_dir), "--out", str(out)]
        run_child(command, work / "logs" / f"checksum-{args.shape}-{side}.log", args.threads)
        sums[side] = json.loads(out.read_text(encoding="utf-8"))
    ref, ours = sums["reference"], sums["ours"]
    problems = [key for key in ("input_ids", "vocab_size", "parameters") if ref[key] != ours[key]]
    for key in ("logits_sum", "logits_abs_sum"):
        if abs(ref[key] - ours[key]) > 1e-6 * max(1.0, abs(ref[key])):
            problems.append(key)
    if ref["vocab_size"] != VOCAB_SIZE:
        problems.append(f"vocabulary {ref['vocab_size']} != {VOCAB_SIZE}")
    if problems:
        raise BenchError(f"the saved model does not load identically in both venvs ({', '.join(problems)}): {sums}")
    return {"logits_sum": ref["logits_sum"], "logits_abs_sum": ref["logits_abs_sum"], "parameters": ref["parameters"]}


def prepare_reference_cwd(data_dir: str, work: Path) -> Path:
    """The reference reads `data/mlama/` under its working directory: symlinks to the shared mLAMA data."""
    data = Path(data_dir).resolve()
    for name in ("mlama1.1", "TREx_multilingual_objects"):
        if not (data / name).is_dir():
            raise BenchError(f"no {name}/ in {data} (--data_dir)")
    cwd = work / "reference-cwd"
    mlama = cwd / "data" / "mlama"
    if mlama.exists():
        shutil.rmtree(mlama)
    (mlama / "GoogleRE_objects").mkdir(parents=True)
    for name in ("mlama1.1", "TREx_multilingual_objects"):
        (mlama / name).symlink_to(data / name)
    for lang in LANGUAGES:  # "empty": no candidates from Google-RE (its relations are excluded anyway)
        (mlama / "GoogleRE_objects" / f"{lang}.json").write_text("{}\n", encoding="utf-8")
    return cwd


def time_run(args, side: str, round_index: int, pythons: dict, model_dir: Path, ref_cwd: Path, work: Path) -> dict:
    out = work / "results" / f"{args.shape}-round{round_index}-{side}.json"
    out.unlink(missing_ok=True)
    common = ["--model_dir", str(model_dir), "--shape", args.shape, "--warmup", str(args.warmup),
              "--steps", str(args.steps), "--out", str(out)]  # fmt: skip
    if side == "reference":
        extra, cwd = ["--reference_dir", str(Path(args.reference_dir).resolve())], ref_cwd
    else:
        extra, cwd = ["--data_dir", str(Path(args.data_dir).resolve()), "--head_dtype", args.ours_head_dtype,
                      "--mend_dtype", args.ours_mend_dtype], None  # fmt: skip
    command = [pythons[side], str(HERE / f"_{side}_driver.py"), "time", *common, *extra]
    run_child(command, work / "logs" / f"{args.shape}-round{round_index}-{side}.log", args.threads, cwd=cwd)
    run = {"round": round_index, **json.loads(out.read_text(encoding="utf-8"))}
    expected = EDITOR_PARAMETERS[args.shape]
    if run["editor_parameters"] != expected:
        raise BenchError(
            f"the {side} editor has {run['editor_parameters']:,} parameters; both must have {expected:,} "
            f"(shape {args.shape}): the two sides are not training the same editor"
        )
    return run


def main(argv: list[str] | None = None) -> dict | None:
    args = parse_args(argv)
    if args.setup_reference_venv is not None:
        setup_reference_venv(args.setup_reference_venv)
        if args.reference_dir is None:
            return None
    work = Path(args.work_dir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    pythons = {"reference": str(Path(args.reference_venv).resolve() / "bin" / "python"), "ours": sys.executable}
    environment = {
        "cpu": cpu_name(),
        "threads": args.threads,
        "reference": {**reference_checkout(args.reference_dir), **reference_environment(pythons["reference"])},
        "ours": ours_environment(pythons["ours"]),
    }
    model_dir = ensure_model(args, pythons["reference"], work)
    model_check = check_model_agrees(args, pythons, model_dir, work)
    ref_cwd = prepare_reference_cwd(args.data_dir, work)
    runs = []
    for round_index, order in enumerate(round_orders(args.rounds), start=1):
        for side in order:
            run = time_run(args, side, round_index, pythons, model_dir, ref_cwd, work)
            print(
                f"round {round_index} {side:<9} median {statistics.median(run['steps_s']):.4f} s/step, "
                f"peak RSS {run['peak_rss_mib']:.1f} MiB",
                flush=True,
            )
            runs.append(run)
    summary = summarise(runs)
    print()
    print(format_report(args.shape, EDITOR_PARAMETERS[args.shape], runs, summary))
    report = {
        "shape": args.shape,
        "dims": SHAPES[args.shape],
        "settings": {"rounds": args.rounds, "warmup": args.warmup, "steps": args.steps, "languages": list(LANGUAGES)},
        "environment": environment,
        "model": {"dir": str(model_dir), **model_check},
        "editor_parameters": EDITOR_PARAMETERS[args.shape],
        "runs": runs,
        "summary": summary,
    }
    if args.json:
        write_json(args.json, report)
    return report


if __name__ == "__main__":
    main()
