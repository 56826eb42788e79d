"""A frozen-prefix cache: the hidden states entering the first edited block, computed once per distinct input row.

A LIME adapter edits a few top blocks only (by default the feed-forward layers of the top 3). When the same prompts
are scored again and again, after each of hundreds of edits, the embeddings and every block below the first edited
one give the same output every time. [`prefix_cache`] stores, per input row, the hidden states that enter the first
edited block `k` and, on later forwards of the same rows, skips blocks `0..k-1` and feeds block `k` the stored states.

How it works, for any model whose transformer body (the module taking `input_ids`: `BertModel`, `GPT2Model`,
`LlamaModel`...) runs an `nn.ModuleList` of blocks one after the other:

- a forward pre-hook on the body keys each row of the batch by its exact inputs (the bytes, dtype and shape of its
  `input_ids`, `attention_mask`, `token_type_ids` and `position_ids` row; broadcast `(1, seq)` inputs count in every
  row) and looks the rows up;
- rows not stored yet are computed by a forward of just those rows that stops at block `k` (a forward pre-hook on
  block `k` takes its `hidden_states` and aborts); a batch with no stored row simply runs normally and is captured
  on the way;
- the batch then runs with blocks `0..k-1` taken out of the body's block list for this one call, and block `k`'s
  pre-hook swaps the hidden states it receives (the embeddings' output) for the stored rows. Everything else block
  `k` receives (the attention mask in the model's own format, rotary position embeddings, `cache_position`...) is
  computed by the model itself for the current batch, exactly as without the cache.

The stored states are only valid while the lower part is unchanged: before every forward the cache compares each
parameter and buffer of the body outside blocks `k..` (embeddings, lower blocks, rotary tables...) against what it
saw when it stored its rows (the tensor, its storage pointer and its in-place version counter) and drops every row
when one differs. Edits of the top blocks (applied, stacked, merged or reverted LIME deltas) change nothing below
block `k` and keep the rows; their effect is in the outputs because blocks `k..` always run.

Limits: a row is its padded inputs (the same prompt padded to another length, or on the other side, is another row);
changes made through `.data` (which PyTorch's version counter does not see) or behaviour switches of the lower
modules that are not parameters or buffers (a hook added, an adapter disabled) are not detected: call
`cache.clear()` after them; one forward at a time (the hooks keep per-forward state: not for concurrent threads);
encoder-decoder models are refused.
"""

from __future__ import annotations

import inspect
import logging
from collections import Counter, OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .tuner.layer import LimeLayer

logger = logging.getLogger(__name__)

KEYED_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "position_ids")
PASSED_THROUGH = ("return_dict", "use_cache")  # body arguments that never change the hidden states
BLOCK_LIST_NAMES = ("layer", "layers", "h", "block", "blocks")
DEFAULT_MAX_BYTES = 1 << 30
Key = tuple[bytes, ...]


class _PrefixReady(Exception):
    """Raised by block `k`'s pre-hook to stop a forward that only computes stored rows."""


@dataclass(frozen=True)
class _Layout:
    """Where the pieces are: the body taking `input_ids`, its block list (and the module holding it), block `k`."""

    body: nn.Module
    parent: nn.Module
    attribute: str
    blocks: nn.ModuleList
    first_block: int


class _LruStore:
    """Row key → hidden states `(seq, hidden)`, least recently used first, bounded by `max_bytes` (keys counted)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.nbytes = 0
        self._rows: OrderedDict[Key, torch.Tensor] = OrderedDict()

    def __len__(self) -> int:
        return len(self._rows)

    def get(self, key: Key) -> torch.Tensor | None:
        row = self._rows.get(key)
        if row is not None:
            self._rows.move_to_end(key)
        return row

    def put(self, key: Key, row: torch.Tensor) -> None:
        self.pop(key)
        self._rows[key] = row
        self.nbytes += _entry_bytes(key, row)

    def pop(self, key: Key) -> None:
        row = self._rows.pop(key, None)
        if row is not None:
            self.nbytes -= _entry_bytes(key, row)

    def evict(self) -> int:
        """Drop least recently used rows until the bound holds; how many were dropped."""
        dropped = 0
        while self._rows and self.nbytes > self.max_bytes:
            key, row = self._rows.popitem(last=False)
            self.nbytes -= _entry_bytes(key, row)
            dropped += 1
        return dropped

    def clear(self) -> None:
        self._rows.clear()
        self.nbytes = 0


def _entry_bytes(key: Key, row: torch.Tensor) -> int:
    return row.nelement() * row.element_size() + sum(len(part) for part in key)


class PrefixCache:
    """
    The cache behind [`prefix_cache`]: hooks on a model's transformer body and on its first edited block. Create it
    with [`prefix_cache`] (which also removes the hooks and frees the rows on exit).

    Args:
        model (`nn.Module`): A `PeftModel` (or `LimeModel`) with a LIME adapter, or a plain `transformers` model.
        max_bytes (`int`, *optional*, defaults to `2**30`): Bound on the stored hidden states (and their keys), in
            bytes; least recently used rows are dropped first.
        first_block (`int`, *optional*): Index `k` of the first block that may change. Defaults to the first block
            holding a LIME layer; required for a model without one. It may not be above the first LIME block.

    Attributes:
        hits (`int`): Rows served from the cache (their blocks `0..k-1` were skipped).
        misses (`int`): Rows whose blocks `0..k-1` were computed (and stored) under the cache.
        bypassed (`int`): Forwards that ran without the cache; `bypass_reasons` counts them by reason (`"grad"`,
            `"training"`, `"autocast"`, `"argument <name>"`...).
        invalidations (`int`): Times every row was dropped because a parameter or buffer below block `k` changed.
        evictions (`int`): Rows dropped to keep `nbytes <= max_bytes`.
    """

    def __init__(self, model: nn.Module, max_bytes: int = DEFAULT_MAX_BYTES, first_block: int | None = None) -> None:
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 0:
            raise ValueError(f"`max_bytes` must be an int >= 0, got {max_bytes!r}.")
        self.layout = _find_layout(model, first_block)
        self._store = _LruStore(max_bytes)
        self._signature = inspect.signature(self.layout.body.forward)
        self._upper = nn.ModuleList(list(self.layout.blocks)[self.layout.first_block :])
        self._upper_ids = {id(block) for block in self._upper}
        self._stamp: tuple | None = None
        self._pending: torch.Tensor | None = None  # the stored rows block k gets in this forward
        self._capture_keys: list[Key] | None = None  # a normal forward storing its rows at block k
        self._filling = False  # a forward of missing rows that stops at block k
        self._filled: torch.Tensor | None = None
        self._skipping = False
        self._paused = False
        self.hits = self.misses = self.bypassed = self.invalidations = self.evictions = 0
        self.bypass_reasons: Counter[str] = Counter()
        self._disabled_reason: str | None = None
        self._handles: list[Any] = []
        self._check_no_lime_layer_below()

    # ------------------------------------------------------------------------------------------- public API
    @property
    def first_block(self) -> int:
        """Index `k` of the first block that runs on every forward."""
        return self.layout.first_block

    @property
    def max_bytes(self) -> int:
        return self._store.max_bytes

    @property
    def nbytes(self) -> int:
        """Bytes held by the stored rows (hidden states plus their keys)."""
        return self._store.nbytes

    def __len__(self) -> int:
        """Number of stored rows."""
        return len(self._store)

    def clear(self) -> None:
        """Drop every stored row (the counters are kept). Call it after changing lower weights through `.data`,
        which PyTorch's version counter does not see."""
        self._store.clear()
        self._stamp = None

    def prefill(self, **inputs: Any) -> int:
        """
        Compute and store the rows of a batch that are not stored yet, running the body only up to block `k`.

        A later forward of the same rows (the same padded inputs) skips blocks `0..k-1`: a training episode prefills
        its edit, update and retain rows in one forward, then its capture and edited forwards run only the top
        blocks (`LimeTrainingArguments.prefix_cache`).

        Args:
            **inputs: The body's keyword arguments as the later forwards pass them (`input_ids`, `attention_mask`,
                `token_type_ids`...).

        Returns:
            `int`: The rows computed: 0 when every row was stored, or when the cache cannot serve these inputs now
            (then counted in `bypassed`).
        """
        served = self._served((), inputs)
        if served is None:
            return 0
        call, keys = served
        missing = [i for i, key in enumerate(keys) if self._store.get(key) is None]
        if missing:
            self._store_rows([keys[i] for i in missing], self._compute_rows(call, missing))
            self.misses += len(missing)
        return len(missing)

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Forwards inside this block run without the cache (and are not counted); the rows are kept."""
        previous, self._paused = self._paused, True
        try:
            yield
        finally:
            self._paused = previous

    def attach(self) -> PrefixCache:
        """Install the hooks (done by [`prefix_cache`] on entry)."""
        body, block = self.layout.body, self.layout.blocks[self.layout.first_block]
        if getattr(body, "_hf_lime_prefix_cache", None) is not None:
            raise RuntimeError("This model already has an active prefix cache; nest no second one.")
        body._hf_lime_prefix_cache = self
        self._handles = [
            body.register_forward_pre_hook(self._body_pre_hook, with_kwargs=True),
            body.register_forward_hook(self._body_post_hook, with_kwargs=True, always_call=True),
            block.register_forward_pre_hook(self._block_pre_hook, with_kwargs=True),
        ]
        return self

    def detach(self) -> None:
        """Remove the hooks, put the block list back and free the rows (done by [`prefix_cache`] on exit)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._restore_blocks()
        self._pending = None
        self.layout.body.__dict__.pop("_hf_lime_prefix_cache", None)
        self.clear()

    def __repr__(self) -> str:
        return (
            f"PrefixCache(first_block={self.first_block}, rows={len(self)}, nbytes={self.nbytes}, "
            f"max_bytes={self.max_bytes}, hits={self.hits}, misses={self.misses}, bypassed={self.bypassed})"
        )

    # ------------------------------------------------------------------------------------------- hooks
    def _body_pre_hook(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        if self._filling or self._paused:
            return None
        self._restore_blocks()  # in case a forward died before its post-hook
        self._pending = None
        served = self._served(args, kwargs)
        return None if served is None else ((), self._prepare(*served))

    def _served(self, args: tuple, kwargs: dict) -> tuple[dict[str, Any], list[Key]] | None:
        """The body's arguments and one key per row, or `None` (counted as bypassed) when the cache cannot serve
        this call."""
        call, reason = self._bind(args, kwargs)
        if reason is None:
            reason = self._check_lower_part(call["input_ids"].device.type)
        keys = None
        if reason is None:
            keys = _row_keys(call, call["input_ids"].shape[0])
            reason = None if keys is not None else "inputs not batched by row"
        if reason is not None:
            self.bypassed += 1
            self.bypass_reasons[reason] += 1
            return None
        return call, keys

    def _body_post_hook(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        if self._filling:
            return None
        self._restore_blocks()
        self._pending = None
        self._capture_keys = None
        return None

    def _block_pre_hook(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        if self._filling:
            self._filled = _hidden_states(args, kwargs).detach()
            raise _PrefixReady
        if self._capture_keys is not None:
            keys, self._capture_keys = self._capture_keys, None
            self._store_rows(keys, _hidden_states(args, kwargs))
            return None
        if self._pending is None:
            return None
        stored, self._pending = self._pending, None
        incoming = _hidden_states(args, kwargs)
        if incoming.shape != stored.shape:
            raise RuntimeError(
                f"Prefix cache: block {self.first_block} received hidden states of shape {tuple(incoming.shape)} "
                f"where the stored rows have {tuple(stored.shape)}; the model does not run its blocks in sequence."
            )
        return _with_hidden_states(args, kwargs, stored)

    # ------------------------------------------------------------------------------------------- the forward
    def _prepare(self, call: dict[str, Any], keys: list[Key]) -> dict[str, Any]:
        """Look the rows up, compute the missing ones, and set up this forward; the body's new kwargs."""
        found = [self._store.get(key) for key in keys]
        missing = [i for i, row in enumerate(found) if row is None]
        if len(missing) == len(keys):
            self.misses += len(keys)
            self._capture_keys = keys  # run normally; block k's pre-hook stores the rows
            return call
        if missing:
            fresh = self._compute_rows(call, missing)
            self._store_rows([keys[i] for i in missing], fresh)
            for j, i in enumerate(missing):
                found[i] = fresh[j]
            self.misses += len(missing)
        self.hits += len(keys) - len(missing)
        self._pending = torch.stack(found)
        self._skip_lower_blocks()
        return call

    def _compute_rows(self, call: dict[str, Any], rows: list[int]) -> torch.Tensor:
        """Hidden states entering block k for some rows of the batch: a forward of those rows stopped at block k."""
        batch = call["input_ids"].shape[0]
        index = torch.tensor(rows, device=call["input_ids"].device)
        sub = {
            name: _select_rows(value, index, batch) if name in KEYED_INPUTS else value for name, value in call.items()
        }
        self._filling, self._filled = True, None
        try:
            self.layout.body(**sub)
        except _PrefixReady:
            pass
        finally:
            self._filling = False
        filled, self._filled = self._filled, None
        if filled is None:
            raise RuntimeError(f"Prefix cache: the forward never reached block {self.first_block}.")
        return filled

    def _store_rows(self, keys: list[Key], hidden: torch.Tensor) -> None:
        if hidden.dim() < 2 or hidden.shape[0] != len(keys):
            self._disabled_reason = f"block {self.first_block} gets hidden states of shape {tuple(hidden.shape)}"
            return
        with torch.inference_mode(False), torch.no_grad():
            rows = [row.clone() for row in hidden.detach().unbind(0)]
        for key, row in zip(keys, rows, strict=True):
            self._store.put(key, row)
        self.evictions += self._store.evict()

    def _skip_lower_blocks(self) -> None:
        if self.first_block > 0:
            self.layout.parent._modules[self.layout.attribute] = self._upper
            self._skipping = True

    def _restore_blocks(self) -> None:
        if self._skipping:
            self.layout.parent._modules[self.layout.attribute] = self.layout.blocks
            self._skipping = False

    # ------------------------------------------------------------------------------------------- checks
    def _bind(self, args: tuple, kwargs: dict) -> tuple[dict[str, Any], str | None]:
        """The body's arguments by name, `use_cache` turned off; or why this call cannot use the cache."""
        if self._disabled_reason is not None:
            return {}, self._disabled_reason
        try:
            bound = self._signature.bind(*args, **kwargs)
        except TypeError:
            return {}, "arguments"
        call: dict[str, Any] = {}
        for name, value in bound.arguments.items():
            kind = self._signature.parameters[name].kind
            if kind is inspect.Parameter.VAR_KEYWORD:
                call.update(value)
            elif kind is inspect.Parameter.VAR_POSITIONAL:
                if value:
                    return {}, "arguments"
            else:
                call[name] = value
        return call, _argument_problem(call, self.layout.body, "use_cache" in self._signature.parameters)

    def _check_lower_part(self, device_type: str) -> str | None:
        """Why the lower part cannot be skipped now (training mode, gradients, autocast), or `None`; drops every
        row when a lower parameter or buffer changed since they were stored."""
        if _autocast_on(device_type):
            return "autocast"
        grad = torch.is_grad_enabled()
        stamp: list[tuple[int, int, int]] = []
        for module in self._lower_modules():
            if module.training:
                return "training"
            for tensors in (module._parameters, module._buffers):
                for tensor in tensors.values():
                    if tensor is None:
                        continue
                    if grad and tensor.requires_grad:
                        return "grad"
                    stamp.append((id(tensor), tensor.data_ptr(), tensor._version))
        current = tuple(stamp)
        if current != self._stamp:
            if len(self._store):
                self.invalidations += 1
            self._store.clear()
            self._stamp = current
        return None

    def _lower_modules(self) -> Iterator[nn.Module]:
        """Every module of the body outside blocks `k..` (embeddings, lower blocks, rotary tables, final norm...)."""
        stack = [self.layout.body]
        while stack:
            module = stack.pop()
            if id(module) in self._upper_ids:
                continue
            yield module
            stack.extend(child for child in module._modules.values() if child is not None)

    def _check_no_lime_layer_below(self) -> None:
        below = [m for m in self._lower_modules() if isinstance(m, LimeLayer)]
        if below:
            raise ValueError(
                f"`first_block={self.first_block}` leaves {len(below)} LIME layer(s) below it; their edits would be "
                "skipped. Use the default (the first block holding a LIME layer) or a lower index."
            )


@contextmanager
def prefix_cache(
    model: nn.Module, max_bytes: int = DEFAULT_MAX_BYTES, first_block: int | None = None
) -> Iterator[PrefixCache]:
    """
    Reuse the hidden states entering the first edited block across forwards of the same input rows.

    Inside the block, every forward of `model` (through the `PeftModel`, its base model, `LimeModel.edit`, or
    [`~hf_lime.head.target_logits`]) looks each row of its batch up by its exact inputs; stored rows skip every
    block below `first_block` (the embeddings still run: they are cheap), new rows are computed once and stored.
    Outputs equal the uncached forward up to float rounding. Edits of the top blocks are seen at once; a change of
    any lower weight or buffer (in place or by replacement) drops every row. Forwards that need the lower blocks
    themselves run without the cache and are counted in `cache.bypassed`: with gradients through a lower parameter,
    in training mode, under autocast, with `inputs_embeds`, a key/value cache (`use_cache=True`, `past_key_values`),
    or asking for hidden states or attentions.

    Args:
        model (`nn.Module`): A `PeftModel` with a LIME adapter (or its `LimeModel`), or a plain `transformers` model
            (BERT, XLM-R, GPT-2, Llama-style...) with `first_block`.
        max_bytes (`int`, *optional*, defaults to `2**30`): Memory bound of the stored rows (hidden states of shape
            `(seq, hidden)` plus their keys), in bytes; least recently used rows are dropped first.
        first_block (`int`, *optional*): The first block that runs on every forward. Defaults to the first block with
            a LIME layer; required for a model without one.

    Yields:
        [`PrefixCache`]: with `hits`, `misses` (rows), `bypassed` (forwards), `nbytes`, `len(cache)` and `clear()`.
        On exit the hooks are removed and the rows freed; the counters stay readable.

    Rows are keyed by their padded `input_ids`, `attention_mask`, `token_type_ids` and `position_ids`: a prompt
    padded to another length is another row. Decoder models run with `use_cache=False` inside the block unless the
    caller asks for `use_cache=True` (then the forward bypasses the cache), so their outputs carry no key/value cache.

    Example:

    ```py
    >>> import torch
    >>> from peft import get_peft_model
    >>> from transformers import BertConfig, BertForMaskedLM
    >>> from hf_lime import LimeConfig
    >>> from hf_lime.prefix_cache import prefix_cache
    >>> _ = torch.manual_seed(0)
    >>> base = BertForMaskedLM(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=4,
    ...                                   num_attention_heads=2, intermediate_size=32)).eval()
    >>> model = get_peft_model(base, LimeConfig(languages=["en", "fr"], num_top_layers=1))
    >>> batch = {"input_ids": torch.tensor([[2, 5, 4, 9, 3]]), "attention_mask": torch.ones(1, 5, dtype=torch.long)}
    >>> with torch.no_grad():
    ...     plain = model(**batch).logits
    ...     with prefix_cache(model, max_bytes=1 << 20) as cache:
    ...         first = model(**batch).logits  # computes and stores the row
    ...         again = model(**batch).logits  # blocks 0..2 skipped
    >>> (cache.first_block, cache.misses, cache.hits)
    (3, 1, 1)
    >>> torch.allclose(again, plain, atol=1e-6)
    True

    ```
    """
    cache = PrefixCache(model, max_bytes=max_bytes, first_block=first_block).attach()
    try:
        yield cache
    finally:
        cache.detach()


@contextmanager
def optional_prefix_cache(model: nn.Module, max_bytes: int = DEFAULT_MAX_BYTES) -> Iterator[PrefixCache | None]:
    """[`prefix_cache`] where one can be installed: yields `None` (and installs nothing) when `max_bytes` is 0, when
    the model has no block list the cache can find, or when a cache is already active on it (the caller's serves)."""
    cache = None
    if max_bytes > 0:
        try:
            cache = PrefixCache(model, max_bytes=max_bytes).attach()
        except (ValueError, RuntimeError) as error:
            logger.info("running without a prefix cache: %s", error)
    try:
        yield cache
    finally:
        if cache is not None:
            cache.detach()


# ----------------------------------------------------------------------------------------------- finding the blocks
def _find_layout(model: nn.Module, first_block: int | None) -> _Layout:
    lime = _lime_blocks(model)
    if lime is not None:
        path, indices = lime
        if first_block is None:
            first_block = min(indices)
    else:
        if first_block is None:
            raise ValueError(
                "This model has no LIME layer to start the cache at: pass `first_block`, the index of the first "
                "block that may change."
            )
        path = _named_block_list(model)
    blocks = model.get_submodule(path)
    if isinstance(first_block, bool) or not isinstance(first_block, int) or not 0 <= first_block < len(blocks):
        raise ValueError(f"`first_block` must be an int in [0, {len(blocks)}), got {first_block!r}.")
    body = _body_of(model, path)
    config = getattr(body, "config", None)
    if getattr(config, "is_encoder_decoder", False):
        raise ValueError("The prefix cache supports encoder-only and decoder-only models, not encoder-decoders.")
    parent_path, _, attribute = path.rpartition(".")
    return _Layout(body, model.get_submodule(parent_path), attribute, blocks, first_block)


def _lime_blocks(model: nn.Module) -> tuple[str, set[int]] | None:
    """The path of the block list holding the LIME layers and their block indices, or `None` without any."""
    paths: dict[str, set[int]] = {}
    for name, module in model.named_modules():
        if isinstance(module, LimeLayer):
            path, index = _outer_list_index(model, name)
            if path is None:
                raise ValueError(f"The LIME layer `{name}` is not inside an `nn.ModuleList` of blocks.")
            paths.setdefault(path, set()).add(index)
    if len(paths) > 1:
        raise ValueError(f"LIME layers sit in several block lists ({sorted(paths)}); the cache needs one.")
    return next(iter(paths.items()), None)


def _outer_list_index(model: nn.Module, name: str) -> tuple[str | None, int]:
    parts = name.split(".")
    for j, part in enumerate(parts[1:], start=1):
        if part.isdigit() and isinstance(model.get_submodule(".".join(parts[:j])), nn.ModuleList):
            return ".".join(parts[:j]), int(part)
    return None, -1


def _named_block_list(model: nn.Module) -> str:
    """The path of the model's block list: the one `nn.ModuleList` named like one (`layer`, `layers`, `h`...)."""
    found = [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.ModuleList) and name.rpartition(".")[2] in BLOCK_LIST_NAMES and len(module)
    ]
    outer = [name for name in found if not any(name.startswith(other + ".") for other in found)]
    if len(outer) != 1:
        raise ValueError(f"Cannot tell the model's block list: found {outer or 'none'} among `nn.ModuleList`s.")
    return outer[0]


def _body_of(model: nn.Module, blocks_path: str) -> nn.Module:
    """The innermost module above the block list whose forward takes `input_ids` (the transformer body)."""
    parts = blocks_path.split(".")
    for j in range(len(parts) - 1, -1, -1):
        module = model.get_submodule(".".join(parts[:j]))
        if "input_ids" in inspect.signature(module.forward).parameters:
            return module
    raise ValueError(f"No module above `{blocks_path}` takes `input_ids`: cannot find the model's body.")


# ----------------------------------------------------------------------------------------------- per-call helpers
def _argument_problem(call: dict[str, Any], body: nn.Module, has_use_cache: bool) -> str | None:
    """Why the body's arguments rule the cache out, or `None`; turns `use_cache` off when it was not asked for."""
    if call.get("use_cache") is True:
        return "argument use_cache"
    if has_use_cache:
        call["use_cache"] = False
    config = getattr(body, "config", None)
    for flag in ("output_hidden_states", "output_attentions"):
        if call.get(flag) is None and getattr(config, flag, False):
            return f"argument {flag}"
    for name, value in call.items():
        if name not in KEYED_INPUTS + PASSED_THROUGH and value is not None and value is not False:
            return f"argument {name}"
    input_ids = call.get("input_ids")
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
        return "argument input_ids"
    return None


def _row_keys(call: dict[str, Any], batch: int) -> list[Key] | None:
    """One key per row: the bytes of its keyed inputs; `None` when an input is not batched by row."""
    rows: list[list[bytes]] = [[] for _ in range(batch)]
    for name in KEYED_INPUTS:
        value = call.get(name)
        if value is None:
            continue
        if not isinstance(value, torch.Tensor) or value.dim() == 0 or value.shape[0] not in (batch, 1):
            return None
        host = value.detach().to("cpu").contiguous()
        header = f"{name}:{host.dtype}:{tuple(host.shape[1:])}".encode()
        data = host.reshape(host.shape[0], -1).view(torch.uint8).numpy()
        for i, parts in enumerate(rows):
            parts += (header, data[i if host.shape[0] == batch else 0].tobytes())
    return [tuple(parts) for parts in rows]


def _select_rows(value: Any, index: torch.Tensor, batch: int) -> Any:
    if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == batch:
        return value.index_select(0, index.to(value.device))
    return value


def _hidden_states(args: tuple, kwargs: dict) -> torch.Tensor:
    hidden = args[0] if args else kwargs.get("hidden_states")
    if not isinstance(hidden, torch.Tensor):
        raise RuntimeError("Prefix cache: the first block gets no `hidden_states` tensor (first argument).")
    return hidden


def _with_hidden_states(args: tuple, kwargs: dict, hidden: torch.Tensor) -> tuple[tuple, dict]:
    if args:
        return (hidden, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": hidden}


def _autocast_on(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except (TypeError, RuntimeError):
        return torch.is_autocast_enabled()
