"""The `hf-lime` command: edit, predict, evaluate, push, prepare-model.

    hf-lime edit --editor outputs/demo --text "The capital of France is [MASK]." --target "Lyon" --language en \
        --show fr de zh                       # languages looked up in the parallel data, or LANG=TEXT
    hf-lime edit --editor outputs/demo --file edits.jsonl --output_lora lora/   # {"prompt", "answer", "language"}
    hf-lime predict --editor outputs/demo --text "La capitale de la France est [MASK]."
    hf-lime evaluate --editor outputs/demo --dataset cldr --languages en fr zh --n_edits 10 --output_dir out/
    hf-lime push --editor outputs/demo --repo_id org/lime-mend-me5
    hf-lime prepare-model me5-small-facts --output outputs/models/me5-small-facts
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

PLACEHOLDERS = ("[MASK]", "[Y]")
EDIT_MODES = ("batch", "sequential")  # `LimeEditor.edit_many`'s modes (not imported: --help stays fast)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hf-lime", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    defaults = {"formatter_class": argparse.ArgumentDefaultsHelpFormatter}  # every option's default in --help
    edit = sub.add_parser("edit", help="Edit in one language and show answers in others, or apply a file of edits.",
                          **defaults)  # fmt: skip
    _editor_args(edit)
    source = edit.add_mutually_exclusive_group(required=True)
    source.add_argument("--text", help="Prompt with [MASK] (masked LMs), text, or prompt (causal).")
    source.add_argument("--file", help="JSON Lines of edits, one {prompt, answer, language} object per line.")
    edit.add_argument("--target", default=None, help="The new answer (label name for classifiers); with --text.")
    edit.add_argument("--language", default=None, help="Editing language; with --text.")
    edit.add_argument("--show", nargs="*", default=[], help="Languages to show: LANG (parallel data) or LANG=TEXT.")
    edit.add_argument("--data_dir", default=None, help="Look --show languages up in mLAMA here (default: CLDR).")
    edit.add_argument("--mode", choices=EDIT_MODES, default="batch",
                      help="--file: one editor call for all edits, or each on the edited model.")  # fmt: skip
    edit.add_argument("--batch_size", type=int, default=None,
                      help="--file, batch mode: at most this many edits per editor call (None: all).")  # fmt: skip
    edit.add_argument("--output_lora", default=None, help="--file: export the edits as one LoRA adapter here.")
    predict = sub.add_parser("predict", help="Print the model's answer.", **defaults)
    _editor_args(predict)
    predict.add_argument("--text", required=True, nargs="+", help="One or more prompts (as for `edit --text`).")
    predict.add_argument("--language", default=None, help="Checked against the editor's languages.")
    predict.add_argument("--num_tokens", type=int, default=None, help="Masked LMs: tokens to predict at [MASK].")
    evaluate = sub.add_parser("evaluate", help="Score edits across languages on a parallel test split.", **defaults)
    _editor_args(evaluate)
    evaluate.add_argument("--dataset", choices=("cldr", "mlama", "xnli"), default="cldr", help="Parallel data.")
    evaluate.add_argument("--data_dir", default=None, help="Folder of mLAMA/XNLI (../shared/data layout).")
    evaluate.add_argument("--languages", nargs="+", default=None, help="Default: the editor's languages.")
    evaluate.add_argument("--relations", nargs="+", default=None, help="mLAMA/CLDR relations (default: all).")
    evaluate.add_argument("--n_edits", type=int, default=20, help="Edits per editing language.")
    evaluate.add_argument("--n_retain", type=int, default=8, help="Unrelated inputs scored per edit (locality).")
    evaluate.add_argument("--seed", type=int, default=0, help="Seed of the split and of the sampled edits.")
    evaluate.add_argument("--bootstrap", type=int, default=0, help="Bootstrap resamples for intervals (0: none).")
    evaluate.add_argument("--output_dir", default=None, help="Write metrics.json and heatmaps here.")
    push = sub.add_parser("push", help="Push an editor folder to the Hub.", **defaults)
    _editor_args(push, revision=False)
    push.add_argument("--repo_id", required=True, help="The Hub repo, `org/name` (created if missing).")
    push.add_argument("--private", action="store_true", help="Create the repo private.")
    push.add_argument("--token", default=None, help="Hub token (default: HF_TOKEN or the saved login).")
    push.add_argument("--license", default=None, help="The model card's license, e.g. apache-2.0.")
    push.add_argument("--commit_message", default=None, help="Commit message.")
    push.add_argument("--revision", default=None, help="Branch to push to (default: main).")
    prepare = sub.add_parser("prepare-model", help="Build an offline real model folder.", **defaults)
    prepare.add_argument("name", choices=("me5-small", "me5-small-xnli", "me5-small-facts"), help="Which model.")
    prepare.add_argument("--output", required=True, help="Folder to write (reused when complete).")
    prepare.add_argument("--steps", type=int, default=None, help="Training steps (default: the model's recipe).")
    prepare.add_argument("--languages", nargs="+", default=None, help="Languages of the training data.")
    prepare.add_argument("--data_dir", default=None, help="Folder of mLAMA/XNLI (../shared/data layout).")
    prepare.add_argument("--facts_source", choices=("cldr", "mlama"), default="cldr", help="Facts to learn.")
    prepare.add_argument("--seed", type=int, default=0, help="Training seed.")
    prepare.add_argument("--split_sizes", nargs=3, type=float, default=None,
                         help="me5-small-xnli: train / validation / test shares of the premises "
                              "(default 0.8 0.1 0.1).")  # fmt: skip
    return parser


def _editor_args(parser: argparse.ArgumentParser, revision: bool = True) -> None:
    parser.add_argument("--editor", required=True, help="Editor folder or Hub id (LimeEditor.from_pretrained).")
    if revision:
        parser.add_argument("--revision", default=None, help="Hub revision of the editor.")


def _load_editor(args):
    from .editor import LimeEditor

    revision = None if args.command == "push" else args.revision
    return LimeEditor.from_pretrained(args.editor, revision=revision)


def _normalise(text: str) -> str:
    for placeholder in PLACEHOLDERS:
        text = text.replace(placeholder, "[Y]")
    return text


def _parallel_prompts(text: str, languages: list[str], data_dir: str | None) -> dict[str, str]:
    """Find `text` among the prompts of parallel facts; return its versions in `languages` (as [MASK] prompts)."""
    if not languages:
        return {}
    if data_dir:
        from .data import load_mlama_items

        items = load_mlama_items(data_dir, languages, min_languages=1)
    else:
        from .data import build_cldr_items

        items = build_cldr_items(sorted(set(languages) | {"en"}))
    wanted = _normalise(text)
    for item in items:
        prompts = dict(zip(item["languages"], item["prompts"], strict=True))
        if wanted in prompts.values():
            return {lang: prompts[lang].replace("[Y]", "[MASK]") for lang in languages if lang in prompts}
    raise ValueError(f"{text!r} is not a prompt of the parallel data; pass --show LANG=TEXT instead.")


def _show_texts(args) -> dict[str, str]:
    explicit = dict(entry.split("=", 1) for entry in args.show if "=" in entry)
    lookup = [entry for entry in args.show if "=" not in entry]
    return {**_parallel_prompts(args.text, lookup, args.data_dir), **explicit}


def cmd_edit(args) -> int:
    if args.file is not None:
        return _edit_file(args)
    if args.target is None:
        raise ValueError("--text needs --target (the new answer).")
    editor = _load_editor(args)
    shown = {args.language or "input": args.text, **_show_texts(args)}
    before = {lang: editor.predict(text) for lang, text in shown.items()}
    with editor.edit(args.text, args.target, language=args.language):
        after = {lang: editor.predict(text) for lang, text in shown.items()}
    print(f"edit ({args.language}): {args.text!r} -> {args.target!r}")
    print(f"{'lang':<8}{'before':<28}{'after':<28}text")
    for lang, text in shown.items():
        print(f"{lang:<8}{before[lang]!s:<28}{after[lang]!s:<28}{text}")
    return 0


def _edit_file(args) -> int:
    """`edit --file`: every line checked before the editor is loaded or anything is applied; print which edits
    held; export them as one LoRA adapter with --output_lora."""
    from .edit_requests import RequestError, read_requests_file

    ignored = [f"--{name}" for name in ("target", "language", "show") if getattr(args, name)]
    if ignored:
        raise ValueError(f"--file takes each edit's answer and language from its line; drop {', '.join(ignored)}.")
    requests, lines = read_requests_file(args.file)
    editor = _load_editor(args)
    try:
        group = editor.edit_many(requests, mode=args.mode, batch_size=args.batch_size)
    except RequestError as error:
        raise ValueError(f"{args.file}, line {lines[error.index]}: {error.reason}") from error
    with group:
        _print_held(requests, lines, group.held)
        if args.output_lora:
            print(f"LoRA adapter: {editor.export_lora(group, args.output_lora)}")
    return 0


def _print_held(requests, lines: list[int], held: list[bool]) -> None:
    print(f"{'line':<6}{'held':<6}{'lang':<8}prompt -> answer")
    for request, line, ok in zip(requests, lines, held, strict=True):
        status, language = "yes" if ok else "NO", request.language or "-"
        print(f"{line:<6}{status:<6}{language:<8}{request.prompt!r} -> {request.answer!r}")
    print(f"{sum(held)} of {len(held)} edits held.")


def cmd_predict(args) -> int:
    editor = _load_editor(args)
    for text in args.text:
        print(editor.predict(text, language=args.language, num_tokens=args.num_tokens))
    return 0


def _evaluation_items(args, languages: list[str]):
    from .data import load_cldr_facts, load_mlama, load_xnli

    if args.dataset == "cldr":
        return load_cldr_facts(languages, seed=args.seed)["test"]
    if args.dataset == "mlama":
        return load_mlama(args.data_dir, languages, relations=args.relations, seed=args.seed)["test"]
    return load_xnli(args.data_dir, languages, seed=args.seed)["test"]


def cmd_evaluate(args) -> int:
    from .evaluation import format_table, save_report

    editor = _load_editor(args)
    languages = args.languages or editor.languages
    if not languages:
        raise ValueError("This editor has no languages; pass --languages.")
    items = _evaluation_items(args, languages)
    result = editor.evaluate(items, languages=languages, n_edits=args.n_edits, n_retain=args.n_retain,
                             seed=args.seed, bootstrap=args.bootstrap,
                             new_target="gold" if args.dataset == "xnli" else "alternative")  # fmt: skip
    print(format_table(result))
    if args.output_dir:
        save_report(result, Path(args.output_dir))
    return 0


def cmd_push(args) -> int:
    editor = _load_editor(args)
    url = editor.push_to_hub(args.repo_id, private=args.private or None, commit_message=args.commit_message,
                             revision=args.revision, token=args.token, license=args.license)  # fmt: skip
    print(url)
    return 0


def cmd_prepare(args) -> int:
    from .real_models.prepare import prepare_model

    folder = prepare_model(args.name, args.output, data_dir=args.data_dir, steps=args.steps, seed=args.seed,
                           languages=args.languages, facts_source=args.facts_source,
                           split_sizes=args.split_sizes)  # fmt: skip
    print(folder)
    return 0


COMMANDS = {"edit": cmd_edit, "predict": cmd_predict, "evaluate": cmd_evaluate, "push": cmd_push,
            "prepare-model": cmd_prepare}  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except _user_errors() as error:
        message = " ".join(str(error).split()) or type(error).__name__  # one line, never a traceback
        print(f"hf-lime {args.command}: error: {message}", file=sys.stderr)
        return 2


def _user_errors() -> tuple[type[BaseException], ...]:
    """What a user can cause: bad values, missing files, and the Hub saying no (offline, not found, unauthorised,
    no such revision), which huggingface_hub raises as `OSError` / `HfHubHTTPError` subclasses."""
    from huggingface_hub.errors import HfHubHTTPError

    return (ValueError, TypeError, OSError, HfHubHTTPError)


if __name__ == "__main__":
    sys.exit(main())
