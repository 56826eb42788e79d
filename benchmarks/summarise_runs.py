"""Tables and paired comparisons from the run files of `benchmarks/reproduce.py` (`docs/results/runs/`).

    python benchmarks/summarise_runs.py --runs_dir docs/results/runs      # writes docs/results/summary.md

For every configuration: the metrics (mean ± std over seeds; with one seed, the grouped 95 % interval). For every claim
of the paper, the paired difference of two configurations evaluated on the same edits (same dataset and seed), with
its grouped bootstrap interval (`hf_lime.metrics.compare_xl_edit_metrics`) and the verdict that interval supports;
with several seeds, also the difference over the seeds pooled (their records concatenated, facts as groups: the
interval over facts) and the 95 % t-interval of the per-seed differences (the interval over training runs). A pooled
claim holds (or is reversed) only when both intervals exclude zero on the same side. Runs read with the sequence
locality protocol (`reproduce.py --locality sequence`) are their own dataset, `<dataset>/seqloc`, and a recipe
variant's (`reproduce.py --variant NAME`) theirs, `<dataset>/NAME`. `claims.png` beside `summary.md` plots the
headline claims (pooled where there are several seeds) with their intervals.
"""

from __future__ import annotations

import argparse
import gzip
import json
from pathlib import Path

import numpy as np

from hf_lime.metrics import compare_xl_edit_metrics

CLAIMS_FIGURE = "claims.png"  # beside summary.md
KEYS = ("reliability", "transfer", "locality_same_relation", "locality_other", "locality", "edit_success", "hmean",
        "hmean_same_relation", "language_gap")  # fmt: skip
# (claim, metric, baseline configuration, candidate configuration, the sign the claim predicts)
CLAIMS = [
    ("(b) cross-lingual training raises transfer (MEND)", "transfer", "mend-monolingual-off", "mend-all-off", 1),
    ("(b) cross-lingual training raises transfer (LiME-MEND)", "transfer", "mend-monolingual-language",
     "mend-all-language", 1),
    ("(b) LiME-MEND all vs the monolingual editor", "transfer", "mend-monolingual-off", "mend-all-language", 1),
    ("(c1) LiME lowers the failure rate (MEND all)", "edit_success", "mend-all-off", "mend-all-language", 1),
    ("(c1) ... with a shared mask (control)", "edit_success", "mend-all-off", "mend-all-shared", 1),
    ("(c1) language-specific vs shared mask", "edit_success", "mend-all-shared", "mend-all-language", 1),
    ("(c2) LiME narrows the language gap (MEND all)", "language_gap", "mend-all-off", "mend-all-language", -1),
    ("(c1) LiME lowers the failure rate (KE all)", "edit_success", "ke-all-off", "ke-all-language", 1),
    ("locality: LiME-MEND all vs MEND all", "locality", "mend-all-off", "mend-all-language", 1),
    ("(a) a trained editor transfers more than FT (reference)", "transfer", "ft_reference-untrained-off",
     "mend-all-off", 1),
    ("(a) a trained editor transfers more than tuned FT", "transfer", "ft_tuned-untrained-off", "mend-all-off", 1),
    ("a trained editor keeps more unrelated facts than tuned FT", "locality", "ft_tuned-untrained-off",
     "mend-all-off", 1),
    ("... and the harmonic mean", "hmean", "ft_tuned-untrained-off", "mend-all-off", 1),
    ("a trained editor keeps more same-relation facts than tuned FT", "locality_same_relation",
     "ft_tuned-untrained-off", "mend-all-off", 1),
    ("locality on the edited relation: LiME-MEND all vs MEND all", "locality_same_relation", "mend-all-off",
     "mend-all-language", 1),
    ("training earns its place: LiME-MEND all vs its untrained twin", "hmean_same_relation", "mend-twin-language",
     "mend-all-language", 1),
    ("LiME-MEND all vs tuned FT: hmean(ES, same-relation locality)", "hmean_same_relation",
     "ft_tuned-untrained-off", "mend-all-language", 1),
    ("tuned FT vs the reference's FT", "reliability", "ft_reference-untrained-off", "ft_tuned-untrained-off", 1),
    ("FT's locality term keeps unrelated facts", "locality", "ft_tuned-untrained-off", "ft_loc-untrained-off", 1),
    ("the reference's KE vs MEND (all, masks off)", "transfer", "mend-all-off", "ke_ref-all-off", 1),
    ("... locality", "locality", "mend-all-off", "ke_ref-all-off", 1),
    ("(c1) LiME lowers the failure rate (reference KE)", "edit_success", "ke_ref-all-off", "ke_ref-all-language", 1),
    ("(b) cross-lingual training raises transfer (reference KE)", "transfer", "ke_ref-monolingual-off",
     "ke_ref-all-off", 1),
    ("(c2) LiME narrows the language gap (reference KE)", "language_gap", "ke_ref-all-off", "ke_ref-all-language", -1),
]  # fmt: skip


def load_runs(runs_dir: Path) -> list[dict]:
    return [json.loads(path.read_text()) for path in sorted(runs_dir.glob("*.json"))]


def records(runs_dir: Path, run_id: str) -> dict:
    with gzip.open(runs_dir / f"{run_id}.records.json.gz", "rt", encoding="utf-8") as handle:
        return json.load(handle)


def config_of(run: dict) -> str:
    return f"{run['editor']}-{run['training']}-{run['mask']}"


def dataset_of(run: dict) -> str:
    """The group a run is compared within: its dataset, its recipe variant if any, its locality protocol, its
    reading (`/strict`: whole-vocabulary answers and locality in parts; runs without it read the earlier way)."""
    variant = f"/{run['variant']}" if run.get("variant") else ""
    strict = "/strict" if run.get("reading") == "strict" else ""
    return run["dataset"] + variant + ("/seqloc" if run.get("locality") == "sequence" else "") + strict


def _cell(runs: list[dict], key: str) -> str:
    values = np.array([float("nan") if r["metrics"].get(key) is None else r["metrics"][key] for r in runs],
                      dtype=float)  # fmt: skip
    if np.isnan(values).all():
        return "–"
    if len(runs) == 1:
        ci = runs[0]["metrics"].get("ci", {}).get(key)
        return f"{values[0]:.3f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")
    return f"{np.nanmean(values):.3f} ± {np.nanstd(values):.3f}"


def table(runs: list[dict]) -> list[str]:
    lines = ["| dataset | configuration | seeds | facts | episodes | " + " | ".join(KEYS) + " |",
             "|" + "---|" * (len(KEYS) + 5)]  # fmt: skip
    groups: dict[tuple[str, str], list[dict]] = {}
    for run in runs:
        groups.setdefault((dataset_of(run), config_of(run)), []).append(run)
    for (dataset, config), rows in sorted(groups.items()):
        episodes = "/".join(str(r["episodes"]) for r in rows if r["episodes"] is not None) or "–"
        cells = " | ".join(_cell(rows, key) for key in KEYS)
        lines.append(f"| {dataset} | {config} | {len(rows)} | {rows[0]['n_facts']} | {episodes} | {cells} |")
    return lines


def verdict(low: float, high: float, sign: int) -> str:
    if low > 0:
        return "holds" if sign > 0 else "reversed"
    if high < 0:
        return "holds" if sign < 0 else "reversed"
    return "not shown (interval contains 0)"


def _seed_records(runs_dir: Path, run: dict) -> dict:
    """A run's records with its seed in the edit ids (so that records of several seeds concatenate)."""
    data = records(runs_dir, run["id"])
    data["edit_ids"] = [f"seed{run['seed']}/{edit_id}" for edit_id in data["edit_ids"]]
    return data


def _compare(a: dict, b: dict, metric: str, bootstrap: int, seed: int) -> dict:
    a, b = dict(a), dict(b)
    groups = a.pop("group_ids", None)
    b.pop("group_ids", None)
    return compare_xl_edit_metrics(a, b, group_ids=groups, bootstrap=bootstrap, seed=seed)[metric]


# two-sided 95 % quantiles of Student's t by degrees of freedom (the seed-level interval of a pooled claim)
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


def seed_interval(differences: list[float]) -> tuple[float, float]:
    """The 95 % t-interval of the mean of per-seed differences (training randomness; needs 2 to 11 seeds)."""
    values = np.asarray(differences, dtype=float)
    half = T_975[len(values) - 1] * values.std(ddof=1) / np.sqrt(len(values))
    return float(values.mean() - half), float(values.mean() + half)


def _row(claim: str, dataset: str, seed: str, metric: str, result: dict, sign: int,
         seeds: tuple[float, float] | None = None) -> str:  # fmt: skip
    """One claim row; a pooled row also shows the seed-level interval, and its verdict needs both intervals."""
    return f"| {claim} | {dataset} | {seed} | {metric} | {_cells(result, seeds)} | {judge(result, sign, seeds)} |"


def _cells(result: dict, seeds: tuple[float, float] | None = None) -> str:
    """`baseline | candidate | difference [interval over facts]` (and, pooled, `; over seeds [...]`)."""
    low, high = result["ci"]
    values = f"{result['baseline']:.3f} | {result['candidate']:.3f} | {result['difference']:+.3f}"
    text = f"{values} [{low:+.3f}, {high:+.3f}]"
    if seeds is not None:
        text += f"; over seeds [{seeds[0]:+.3f}, {seeds[1]:+.3f}]"
    return text


def judge(result: dict, sign: int, seeds: tuple[float, float] | None = None) -> str:
    """The verdict of a claim's interval over facts and, pooled over seeds, of its interval over seeds as well."""
    judged = verdict(*result["ci"], sign)
    if seeds is None or judged.startswith("not shown"):
        return judged
    over_seeds = verdict(*seeds, sign)
    if over_seeds == judged:
        return judged
    if over_seeds.startswith("not shown"):  # too few seeds, or seeds of different signs
        return "not shown (the interval over seeds contains 0)"
    return f"not shown ({over_seeds} over seeds)"


def _concat(parts: list[dict]) -> dict:
    """Records of several runs, concatenated field by field."""
    return {key: [value for part in parts for value in part[key]] for key in parts[0]}


def paired(pairs: list[tuple[dict, dict]], seeds: list[int], metric: str, bootstrap: int) -> list[tuple]:
    """`(result, seed-level interval or None)` for each pair of runs' records (one pair per seed) and, with several
    pairs, one more for the pooled records: the difference over facts and the t-interval of the per-seed ones."""
    out = [(_compare(a, b, metric, bootstrap, seed), None) for (a, b), seed in zip(pairs, seeds, strict=True)]
    if len(pairs) > 1:
        pooled = _compare(_concat([a for a, _ in pairs]), _concat([b for _, b in pairs]), metric, bootstrap, 0)
        out.append((pooled, seed_interval([result["difference"] for result, _ in out])))
    return out


def claim_results(runs: list[dict], runs_dir: Path, bootstrap: int) -> list[dict]:
    """Every claim of `CLAIMS` that two runs of a group pair for: one entry per seed and, with several seeds, a pooled
    one (`seeds`: the seed-level interval). Each entry: claim, dataset, seed (label), metric, result, sign, seeds."""
    by_key = {(dataset_of(r), config_of(r), r["seed"]): r for r in runs}
    loaded: dict[str, dict] = {}  # each run's records are read once, whatever the claims it enters

    def load(run: dict) -> dict:
        if run["id"] not in loaded:
            loaded[run["id"]] = _seed_records(runs_dir, run)
        return loaded[run["id"]]

    entries = []
    for claim, metric, base, cand, sign in CLAIMS:
        pairs: dict[str, list[tuple[dict, dict]]] = {}
        for (dataset, config, seed), run in sorted(by_key.items()):
            if config == base and (dataset, cand, seed) in by_key:
                pairs.setdefault(dataset, []).append((run, by_key[(dataset, cand, seed)]))
        common = {"claim": claim, "metric": metric, "sign": sign}
        for dataset, matched in pairs.items():
            labels = [str(run_a["seed"]) for run_a, _ in matched] + [f"pooled ({len(matched)})"] * (len(matched) > 1)
            loaded_pairs = [(load(run_a), load(run_b)) for run_a, run_b in matched]
            results = paired(loaded_pairs, [run_a["seed"] for run_a, _ in matched], metric, bootstrap)
            entries += [{**common, "dataset": dataset, "seed": label, "result": result, "seeds": seeds}
                        for label, (result, seeds) in zip(labels, results, strict=True)]  # fmt: skip
    return entries


def comparisons(entries: list[dict]) -> list[str]:
    lines = ["| claim | dataset | seed | metric | baseline | candidate | difference [95 % CI] | verdict |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for e in entries:
        claim = f"**{e['claim']}**" if e["seeds"] is not None else e["claim"]
        lines.append(_row(claim, e["dataset"], e["seed"], e["metric"], e["result"], e["sign"], e["seeds"]))
    return lines


def headline(entries: list[dict]) -> list[dict]:
    """One entry per claim and group: the pooled one where there are several seeds, else the single seed's."""
    pooled = {(e["claim"], e["dataset"]) for e in entries if e["seeds"] is not None}
    return [e for e in entries if e["seeds"] is not None or (e["claim"], e["dataset"]) not in pooled]


def plot_claims(entries: list[dict], path: Path) -> Path:
    """A forest plot of the headline claims: each paired difference with its interval over facts (thin) and, pooled
    over seeds, over seeds (thick); the sign a claim predicts is to the right (a "lower is better" metric is
    flipped), the colour is the verdict."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = headline(entries)
    colours = {"holds": "tab:green", "reversed": "tab:red"}
    fig = Figure(figsize=(9, 0.32 * len(rows) + 1.2))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for y, e in enumerate(reversed(rows)):
        sign, result = e["sign"], e["result"]
        low, high = sorted((sign * result["ci"][0], sign * result["ci"][1]))
        colour = colours.get(judge(result, sign, e["seeds"]), "tab:gray")
        ax.plot([low, high], [y, y], color=colour, linewidth=1.5)
        if e["seeds"] is not None:
            s_low, s_high = sorted((sign * e["seeds"][0], sign * e["seeds"][1]))
            ax.plot([s_low, s_high], [y, y], color=colour, linewidth=5, alpha=0.35)
        ax.plot([sign * result["difference"]], [y], "o", color=colour)
    labels = [f"{e['claim']} [{e['dataset']}, {e['seed']}]" for e in reversed(rows)]
    ax.set_yticks(range(len(rows)), labels, fontsize=7)
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_xlabel("paired difference, signed so that the claim predicts > 0 (95 % intervals)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def compare_runs(runs_dir: Path, base_ids: list[str], cand_ids: list[str], metrics: tuple[str, ...] = KEYS,
                 bootstrap: int = 1000) -> list[str]:  # fmt: skip
    """
    Paired differences of two editors evaluated on the same edits, as markdown rows: `cand_ids[i] - base_ids[i]` per
    metric and pair (one pair per seed), grouped bootstrap intervals over facts, and with several pairs the pooled
    difference with its interval over facts and over seeds. Any two runs pair, whatever their configuration, variant
    or protocol, as long as their edits are the same (`compare_xl_edit_metrics` refuses them otherwise).

    Raises:
        ValueError: When a run file is missing, the lists differ in length, or two runs were not made on the same
            edits.
    """
    if not base_ids or len(base_ids) != len(cand_ids):
        raise ValueError(f"compare needs as many candidate runs as baseline runs, got {base_ids} and {cand_ids}")
    runs = {run["id"]: run for run in load_runs(runs_dir)}
    missing = [run_id for run_id in [*base_ids, *cand_ids] if run_id not in runs]
    if missing:
        raise ValueError(f"no run file for {missing} in {runs_dir}; available: {sorted(runs)}")
    ids = list(zip(base_ids, cand_ids, strict=True))
    pairs = [(_seed_records(runs_dir, runs[a]), _seed_records(runs_dir, runs[b])) for a, b in ids]
    words = {"holds": "candidate higher", "reversed": "candidate lower"}

    def row(metric: str, label: str, result: dict, seeds=None) -> str:
        verdict_text = judge(result, 1, seeds)
        return f"| {metric} | {label} | {_cells(result, seeds)} | {words.get(verdict_text, verdict_text)} |"

    labels = [("{}", f"{b_id} vs {a_id}") for a_id, b_id in ids]
    labels += [("**{}**", f"pooled ({len(ids)})")] * (len(ids) > 1)
    lines = ["| metric | runs | baseline | candidate | difference [95 % CI] | verdict |", "|---|---|---|---|---|---|"]
    for metric in metrics:
        results = paired(pairs, [runs[a_id]["seed"] for a_id, _ in ids], metric, bootstrap)
        for (name, label), (result, seeds) in zip(labels, results, strict=True):
            lines.append(row(name.format(metric), label, result, seeds))
    return lines


def summarise(runs_dir: Path, out_dir: Path, bootstrap: int = 1000) -> Path:
    runs = load_runs(runs_dir)
    entries = claim_results(runs, runs_dir, bootstrap)
    if entries:
        plot_claims(entries, out_dir / CLAIMS_FIGURE)
    text = ["# Grid summary (generated by benchmarks/summarise_runs.py from docs/results/runs/)", "",
            "## Configurations", "", *table(runs), "", "## Paired comparisons (same edits, grouped by fact)", "",
            f"![the claims, pooled over seeds where there are several]({CLAIMS_FIGURE})", "",
            *comparisons(entries), ""]  # fmt: skip
    path = out_dir / "summary.md"
    path.write_text("\n".join(text))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs_dir", default="docs/results/runs")
    parser.add_argument("--bootstrap", type=int, default=1000)
    args = parser.parse_args()
    print(summarise(Path(args.runs_dir), Path(args.runs_dir).parent, args.bootstrap).read_text())


if __name__ == "__main__":
    main()
