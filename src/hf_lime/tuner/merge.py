"""Joining many MEND edits without their interfering: each edit's own tokens see the change they would see alone.

MEND's batched edit sums the rows' rank-one updates, `ΔW = Σ_t b_t a_tᵀ` (`b_t` the mapped gradient times the step
size, `a_t` the mapped input, one pair per edit token). An edit token `j` (its raw layer input `x_j`) then sees
`ΔW x_j = Σ_t b_t (a_t · x_j)`: its own row's terms, and every other row's as well. Where the prompts of a relation
give similar layer inputs, the others' terms dominate as soon as there are a few edits, and the edits stop holding
(docs/results.md, "many edits").

`combine="solve"` keeps the input factors `A` and chooses new output factors `B'` so that every edit token sees
exactly what its own row's edit alone would give it:

    B' (G + λ I) = B (G ⊙ M),      G[t, j] = a_t · x_j,      M[t, j] = 1 if t and j are tokens of the same row,

a `T × T` ridge system per layer (`T` the edit tokens; `λ = ridge · mean |G[j, j]|`). One row is left as it was
(`M` all ones: `B' = B G (G + λI)⁻¹ ≈ B`). What it does to inputs that were not edited is measured, not implied: see
docs/results.md.

Sequential edits ([`protect_merge`]): each new edit's output factors are fitted, by ridge least squares, to give its
own tokens their own change and the tokens of the edits made before it (their layer inputs when they were made) no
change, `B' (G Gᵀ + H Hᵀ + λI) = B (G ⊙ M) Gᵀ` with `H[t, p] = a_t · x_p` over the earlier tokens `p`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..deltas import SOLVE_KEYS, LayerDelta

COMBINES = ("sum", "mean", "solve")  # how an edit joins MEND's per-row updates (LimeModel.edit's `combine`)
DEFAULT_RIDGE = 0.1  # chosen on the CLDR validation split (docs/results.md §5a)
DEFAULT_PRESERVE_WEIGHT = 0.3  # per edit token; chosen on the CLDR validation split (docs/results.md §5a)
PRESERVE_EPS = 1e-6  # conditioning of preserve_merge's normal equations, relative to their mean diagonal


def _checked_ridge(ridge: float | None) -> float:
    ridge = DEFAULT_RIDGE if ridge is None else ridge
    if isinstance(ridge, bool) or not isinstance(ridge, int | float) or not ridge > 0:
        raise ValueError(f"`ridge` must be a positive number, got {ridge!r}.")
    return ridge


def _check_keys(edit) -> None:
    if SOLVE_KEYS not in edit.info.extra:
        raise ValueError("combine='solve' needs MEND edits (their factors and the raw inputs of their tokens).")


def _ridged(matrix: torch.Tensor, ridge: float) -> torch.Tensor:
    """`matrix + λI`, `λ = ridge · mean |diagonal|`."""
    scale = matrix.diagonal().abs().mean().clamp_min(torch.finfo(torch.float64).tiny)
    return matrix + ridge * scale * torch.eye(matrix.shape[0], dtype=matrix.dtype, device=matrix.device)


def _layer_system(parts: Sequence[tuple[LayerDelta, torch.Tensor, torch.Tensor]], ridge: float) -> list[LayerDelta]:
    """New deltas of one layer for `parts` = [(delta, raw inputs x, rows)] of several edits, rows numbered apart."""
    B = torch.cat([delta.B for delta, _, _ in parts], dim=1).double()  # (d_out, T)
    A = torch.cat([delta.A for delta, _, _ in parts]).double()  # (T, d_in)
    X = torch.cat([x for _, x, _ in parts]).double()  # (T, d_in)
    rows = torch.cat([row for _, _, row in parts])
    G = A @ X.T  # G[t, j] = a_t · x_j
    same = rows[:, None] == rows[None, :]
    system = _ridged(G, ridge)
    target = B @ (G * same)  # (d_out, T): what each token sees from its own row alone
    solved = torch.linalg.solve(system.T, target.T).T  # B' system = target
    counts = [delta.B.shape[1] for delta, _, _ in parts]
    return [
        LayerDelta(part.to(delta.B.dtype), delta.A)
        for (delta, _, _), part in zip(parts, solved.split(counts, dim=1), strict=True)
    ]


def solve_merge(edits: Sequence, ridge: float | None = None) -> None:
    """
    Replace the output factors of computed (not applied) MEND edits so that each edit token sees its own row's edit
    alone (the module docstring), across all `edits` together. In place.

    Args:
        edits (`Sequence[Edit]`): Edits computed by MEND with their raw keys recorded (`EditInfo.extra[SOLVE_KEYS]`).
        ridge (`float`, *optional*): The ridge term, relative to the mean diagonal of `G` (`DEFAULT_RIDGE`).

    Raises:
        ValueError: an edit without recorded keys (not MEND) or with dense deltas, or a bad `ridge`.
    """
    ridge = _checked_ridge(ridge)
    for name, entries in _layer_parts(edits).items():
        merged = _layer_system([(delta, x, rows) for _, delta, x, rows in entries], ridge)
        for (edit, _, _, _), delta in zip(entries, merged, strict=True):
            edit.deltas[name] = delta


def _layer_parts(edits: Sequence) -> dict[str, list[tuple]]:
    """Per layer key, `(edit, delta, raw inputs x, rows)` of every edit, the rows of different edits numbered apart."""
    for edit in edits:
        _check_keys(edit)
    offset = 0
    parts: dict[str, list] = {}
    for edit in edits:
        keys = edit.info.extra[SOLVE_KEYS]
        n_rows = 0
        for name, delta in edit.deltas.items():
            x, rows = keys[name]
            if delta.A is None or delta.A.shape[0] != x.shape[0]:
                raise ValueError(f"Layer {name!r}: combine='solve' needs one factor pair per edit token.")
            parts.setdefault(name, []).append((edit, delta, x, rows + offset))
            n_rows = max(n_rows, int(rows.max()) + 1 if rows.numel() else 0)
        offset += n_rows
    return parts


def protect_merge(edit, protected: dict[str, torch.Tensor], ridge: float | None = None) -> None:
    """
    Refit the output factors of one computed (not applied) MEND edit so that the raw inputs in `protected` (the
    tokens of earlier edits, per layer key) see no change and its own tokens see their own (the module docstring);
    then add its tokens to `protected`. In place.

    Args:
        edit (`Edit`): A MEND edit with its keys recorded.
        protected (`dict[str, torch.Tensor]`): Layer key -> `(P, d_in)` raw inputs to keep; updated.
        ridge (`float`, *optional*): Relative to the mean diagonal of `G Gᵀ + H Hᵀ` (`DEFAULT_RIDGE`).
    """
    ridge = _checked_ridge(ridge)
    _check_keys(edit)
    for name, delta in list(edit.deltas.items()):
        x, rows = edit.info.extra[SOLVE_KEYS][name]
        A, B = delta.A.double(), delta.B.double()
        G = A @ x.double().T
        target = B @ (G * (rows[:, None] == rows[None, :]))
        normal = G @ G.T
        earlier = protected.get(name)
        if earlier is not None and earlier.shape[0]:
            H = A @ earlier.double().T
            normal = normal + H @ H.T
        system = _ridged(normal, ridge)
        solved = torch.linalg.solve(system.T, (target @ G.T).T).T
        edit.deltas[name] = LayerDelta(solved.to(delta.B.dtype), delta.A)
        protected[name] = x if earlier is None else torch.cat([earlier, x])


# ------------------------------------------------------------------------------------------------ preservation
def _checked_weight(weight: float | None) -> float:
    weight = DEFAULT_PRESERVE_WEIGHT if weight is None else weight
    if isinstance(weight, bool) or not isinstance(weight, int | float) or not weight >= 0:
        raise ValueError(f"`preserve_weight` must be a number >= 0, got {weight!r}.")
    return float(weight)


def _own_targets(delta: LayerDelta, x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """`(d_out, T)`: what each edit token sees from its own row's update alone, `B (G ⊙ M)`."""
    G = delta.A.double() @ x.double().T
    return delta.B.double() @ (G * (rows[:, None] == rows[None, :]))


def _preserving_factor(X: torch.Tensor, moments: torch.Tensor, weight: float) -> torch.Tensor:
    """`X (XᵀX + w T C + εI)⁻¹` — the input factor of the least-squares update that gives the `T` keys `X` their
    targets and changes the preserved keys (second moment `C`) as little as it can; `ε` a tiny ridge for
    conditioning only."""
    normal = _ridged(X.T @ X + (weight * X.shape[0]) * moments.to(X), PRESERVE_EPS)
    return torch.linalg.solve(normal, X.T).T  # normal is symmetric


def _checked_moments(moments: dict[str, torch.Tensor], name: str, d_in: int) -> torch.Tensor:
    matrix = moments.get(name)
    if matrix is None or tuple(matrix.shape) != (d_in, d_in):
        raise ValueError(
            f"`preserve` needs a ({d_in}, {d_in}) key moment for layer {name!r} (from `key_moments` on this model); "
            f"got {None if matrix is None else tuple(matrix.shape)}."
        )
    return matrix


def preserve_merge(edits: Sequence, moments: dict[str, torch.Tensor], weight: float | None = None) -> None:
    """
    Refit computed (not applied) MEND edits together as one least-squares update per layer (MEMIT's form with
    MEND's targets): every edit token `j` should see `v_j`, what its own row's MEND update alone gives it
    (`B (G ⊙ M)`, as in [`solve_merge`]), and the keys the model usually sees (second moment `C`, from
    [`~hf_lime.tuner.preserve.key_moments`]) should see no change:

        ΔW = V X (XᵀX + w T C + εI)⁻¹,

    `X` the `T` edit tokens' raw inputs, `w` the weight of the preserved keys per edit token. Each edit keeps its own
    tokens' part (`V[:, j] a'_jᵀ`), so edits revert one by one. In place.

    Args:
        edits (`Sequence[Edit]`): MEND edits with their keys recorded (`EditInfo.extra[SOLVE_KEYS]`).
        moments (`dict[str, torch.Tensor]`): Layer key -> `(d_in, d_in)` mean `x xᵀ` of the keys to preserve.
        weight (`float`, *optional*): `w` (`DEFAULT_PRESERVE_WEIGHT`); `0` gives each edit token its target alone.

    Raises:
        ValueError: an edit without keys, a moment missing or of the wrong shape, or a bad `weight`.
    """
    weight = _checked_weight(weight)
    for name, entries in _layer_parts(edits).items():
        X = torch.cat([x for _, _, x, _ in entries]).double()
        moment = _checked_moments(moments, name, X.shape[1])
        targets = torch.cat([_own_targets(delta, x, rows) for _, delta, x, rows in entries], dim=1)
        factor = _preserving_factor(X, moment, weight)
        start = 0
        for edit, delta, x, _ in entries:
            stop = start + x.shape[0]
            edit.deltas[name] = LayerDelta(
                targets[:, start:stop].to(delta.B.dtype), factor[start:stop].to(delta.A.dtype)
            )
            start = stop
