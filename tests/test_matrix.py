"""The test matrix: every family × editor (mend, ke, ft) × mask (off, language, shared) runs the shared checks of
`testing_common.py` — an edit lowers the loss, revert is bit-exact (of single edits, and of batches and sequences of
edits), save/load reproduces, the files are written, rows riding along in the edit's forward change nothing, a
training episode sharing its rows' lower blocks (`run_episode(prefix=...)`) gives the same loss and gradients.
The fine-tuning editor has no inputs to mask, so it runs with masks off only."""

from __future__ import annotations

import pytest
from conftest import FAMILIES
from testing_common import (
    Case,
    check_edit_lowers_the_loss,
    check_edit_many_reverts_bit_exactly,
    check_files_written,
    check_passenger_rows_change_nothing,
    check_revert_is_bit_exact,
    check_save_load_reproduces,
    check_shared_prefix_episode,
)

CASES = [
    Case(family, editor, mask)
    for family in sorted(FAMILIES)
    for editor in ("mend", "ke", "ft")
    for mask in (("off",) if editor == "ft" else ("off", "language", "shared"))
]
MATRIX = pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])


@MATRIX
def test_edit_lowers_the_loss(case):
    check_edit_lowers_the_loss(case.model(), case.batch())


@MATRIX
def test_revert_is_bit_exact(case):
    check_revert_is_bit_exact(case.model(), case.batch())


@MATRIX
def test_save_load_reproduces_and_files_are_written(case, tmp_path):
    model = case.model()
    check_save_load_reproduces(model, case.batch(), case.family, tmp_path)
    check_files_written(model, tmp_path)


@MATRIX
def test_passenger_rows_change_nothing(case):
    check_passenger_rows_change_nothing(case.model(), case.batch(), case.task)


@MATRIX
def test_edit_many_reverts_bit_exactly(case):
    check_edit_many_reverts_bit_exactly(case.model(), case.task)


TRAINED = [case for case in CASES if case.editor != "ft"]  # the fine-tuning editor has nothing to train


@pytest.mark.parametrize("case", TRAINED, ids=[case.id for case in TRAINED])
def test_shared_prefix_episode_matches(case):
    check_shared_prefix_episode(case.model(), case.task)
