"""lime_xl_edit: cross-lingual model editing metrics (edit success and locality per language pair).

This file is the `evaluate` wrapper; the arithmetic lives in `hf_lime.metrics.xl_edit` so that there is one
implementation, usable without `evaluate`. The module therefore needs `hf_lime` installed (evaluate reports a missing
`hf_lime` with an install hint when it loads the file).
"""

import datasets
import evaluate

from hf_lime.metrics.xl_edit import compute_xl_edit_metrics

_CITATION = """\
@inproceedings{xu-etal-2023-language-anisotropic,
    title = "Language Anisotropic Cross-Lingual Model Editing",
    author = "Xu, Yang and Hou, Yutai and Che, Wanxiang and Zhang, Min",
    booktitle = "Findings of the Association for Computational Linguistics: ACL 2023",
    year = "2023",
    url = "https://huggingface.co/papers/2205.12677",
}
"""

_DESCRIPTION = """\
Cross-lingual model editing metrics from LiME (https://huggingface.co/papers/2205.12677). An edit is made in one
language and scored in every language. Each record is one scored prediction of the edited model: an "edit" record
counts as a success when the prediction equals the new target in the evaluation language (edit success, ES); a
locality record counts when the prediction equals the model's prediction before the edit (locality, Loc). Locality
comes in parts: "neighbour" records (facts of the edited relation about other subjects), "retain" records (unrelated
facts) and "sequence" records (unrelated prompts read at every position). Records are averaged into cells (edit
language, evaluation language) and cells into reliability (diagonal ES), transfer (off-diagonal ES), edit success,
locality and its parts, harmonic means, per-language means and the gap between languages, with optional bootstrap
confidence intervals over edits or over groups of edits (the facts they were made from).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `str`): The edited model's prediction for each record (class ids as strings).
    references (`list` of `str`): For an "edit" record the new target in the evaluation language; for a locality
        record ("neighbour", "retain", "sequence") the model's prediction before the edit.
    edit_ids (`list` of `str`): The edit each record belongs to; one edit language per edit id.
    edit_languages (`list` of `str`): The language each edit was made in.
    eval_languages (`list` of `str`): The language each record is evaluated in.
    kinds (`list` of `str`): "edit", "neighbour" (same relation, other subject), "retain" (another fact) or
        "sequence" (another prompt, read at every position).
    bootstrap (`int`, *optional*, defaults to `0`): Bootstrap resamples; 0 disables the intervals.
    group_ids (`list` of `str`, *optional*): One per record, the fact or example the edit was made from (edits of
        one fact in several languages share it). The bootstrap then resamples these groups, not the edits.
    confidence (`float`, *optional*, defaults to `0.95`): Coverage of the percentile intervals.
    seed (`int`, *optional*, defaults to `0`): Seed of the resampling.
Returns:
    reliability (`float`): Mean of the diagonal ES cells (edit language == evaluation language).
    transfer (`float`): Mean of the off-diagonal ES cells; NaN when there are none.
    edit_success (`float`): Mean of all ES cells.
    locality (`float`): Mean of the Loc cells of "neighbour" and "retain" records pooled; NaN without them.
    hmean (`float`): Harmonic mean of edit_success and locality (0 when both are 0).
    locality_same_relation (`float`): Mean of the Loc cells of "neighbour" records; NaN without them.
    locality_other (`float`): The same for "retain" records.
    locality_sequence (`float`): The same for "sequence" records.
    hmean_same_relation (`float`): Harmonic mean of edit_success and locality_same_relation.
    language_gap (`float`): Max minus min of es_by_language.
    language_std (`float`): Population standard deviation of es_by_language.
    es_by_language (`dict`): Per evaluation language, the mean of its ES cells over edit languages.
    loc_by_language (`dict`): The same for Loc.
    es_matrix (`dict`): {edit_language: {eval_language: ES}}; cells without records are absent.
    loc_matrix (`dict`): {edit_language: {eval_language: Loc}}.
    n_edits (`int`): Number of distinct edit ids.
    n_records (`int`): Number of records.
    ci (`dict`, only when bootstrap > 0): {name: [low, high]} for reliability, transfer, edit_success, locality,
        hmean, the three locality parts and hmean_same_relation.
Examples:
    >>> import evaluate
    >>> metric = evaluate.load("lime_xl_edit")
    >>> results = metric.compute(
    ...     predictions=["Paris", "Paris", "Rome", "Berlin", "Madrid"],
    ...     references=["Paris", "Paris", "Roma", "Berlin", "Lisbon"],
    ...     edit_ids=["e1", "e1", "e1", "e1", "e1"],
    ...     edit_languages=["en", "en", "en", "en", "en"],
    ...     eval_languages=["en", "fr", "it", "fr", "it"],
    ...     kinds=["edit", "edit", "edit", "retain", "retain"],
    ... )
    >>> print(results["reliability"], results["transfer"], results["locality"])
    1.0 0.5 0.5
    >>> print(results["es_matrix"])
    {'en': {'en': 1.0, 'fr': 1.0, 'it': 0.0}}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class LimeXlEdit(evaluate.Metric):
    """Cross-lingual edit success and locality (LiME)."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Value("string"),
                    "references": datasets.Value("string"),
                    "edit_ids": datasets.Value("string"),
                    "edit_languages": datasets.Value("string"),
                    "eval_languages": datasets.Value("string"),
                    "kinds": datasets.Value("string"),
                }
            ),
            homepage="https://huggingface.co/papers/2205.12677",
            reference_urls=["https://huggingface.co/papers/2205.12677", "https://github.com/franklear/LiME"],
        )

    def _compute(
        self,
        predictions,
        references,
        edit_ids,
        edit_languages,
        eval_languages,
        kinds,
        bootstrap=0,
        confidence=0.95,
        seed=0,
        group_ids=None,
    ):
        return compute_xl_edit_metrics(
            predictions=predictions,
            references=references,
            edit_ids=edit_ids,
            edit_languages=edit_languages,
            eval_languages=eval_languages,
            kinds=kinds,
            bootstrap=bootstrap,
            confidence=confidence,
            seed=seed,
            group_ids=group_ids,
        )
