"""An interactive cross-lingual edit over a saved LIME editor (Gradio; runs as a Hugging Face Space as it is).

    python examples/app.py --editor outputs/demo        # the editor `make demo` trained; open http://127.0.0.1:7860
    python examples/app.py --editor org/my-lime-editor  # or one on the Hub

In: the same question in every language (one `lang: prompt` line each), the language to edit in, and the new answer
(one form for every language, or `en: Addis Ababa | fr: Addis-Abeba | ...`). Out: every language's answer before and
after the edit, and a heatmap of how likely each language finds its form of the new answer before and after. The
edit stays applied until **Revert** (the base model again, bit for bit); edits made one after the other stack.

The **Several edits** tab takes a small list of edits (at most `MAX_EDITS`), one block of lines per fact, blocks
separated by a blank line. A block's first line is the edit, `lang: prompt => answer`, made in `lang`; its other
lines are the same question in other languages, `lang: prompt => that language's form of the answer` (without
`=> ...`, the edit's own form), read but not edited:

    en: Dante was born in [MASK] . => Florence
    fr: Dante est né à [MASK] . => Florence
    de: Dante wurde in [MASK] geboren . => Florenz

    fr: La capitale de l'Italie est [MASK] . => Milan
    en: The capital of Italy is [MASK] . => Milan

All the edits are applied together with `LimeEditor.edit_many` (`batch`: computed at once on the model as it is;
`sequential`: one after the other), and a table says, for every edit and language, whether the new answer holds and
what the model answers; a second table has every answer before and after.

With `--candidates cldr` (the default when the editor's languages have CLDR templates, as the demo's do) answers are
read as mLAMA's typed querying reads them, by ranking the held-out capitals; otherwise they are decoded at the masks.
The examples are held-out CLDR capitals, each edited to the next country's capital.

As a Space: copy this file to `app.py` at the root of a Gradio Space, add a `requirements.txt` with `hf_lime` (from
its git URL), `gradio` and `babel`, and set the variable `LIME_EDITOR` to the editor's Hub id.
"""

from __future__ import annotations

import argparse
import math
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hf_lime import LimeEditor

EXAMPLES_SEED = 0
HEADERS = ["language", "prompt", "new answer", "before", "after", "holds"]
MANY_HEADERS = ["edit", "language", "prompt", "new answer", "before", "after", "holds"]
MAX_EDITS = 50  # edits per request of the "Several edits" tab (each is read in every language it gives)
ANSWER_ARROW = "=>"


# ------------------------------------------------------------------------------------------------ parsing
def parse_prompts(text: str, languages: Sequence[str]) -> dict[str, str]:
    """`lang: prompt` lines into `{lang: prompt}`, in the editor's language order (blank lines skipped)."""
    prompts: dict[str, str] = {}
    for line in (text or "").splitlines():
        if not line.strip():
            continue
        lang, sep, prompt = line.partition(":")
        lang = lang.strip()
        if not sep or not prompt.strip():
            raise ValueError(f"Write one `lang: prompt` per line; got {line.strip()!r}.")
        if lang not in languages:
            raise ValueError(f"Unknown language {lang!r} in {line.strip()!r}; this editor knows {list(languages)}.")
        prompts[lang] = prompt.strip()
    if not prompts:
        raise ValueError("Give at least one `lang: prompt` line.")
    return {lang: prompts[lang] for lang in languages if lang in prompts}


def parse_answers(text: str, languages: Sequence[str]) -> dict[str, str]:
    """One answer for every language, or `lang: answer | lang: answer` (languages left out share the first form)."""
    text = (text or "").strip()
    if not text:
        raise ValueError("The new answer is empty.")
    parts = [part.strip() for part in text.split("|") if part.strip()]
    named = [part.partition(":") for part in parts]
    if not all(sep and lang.strip() in languages for lang, sep, _ in named):
        if len(parts) > 1:
            allowed = list(languages)
            raise ValueError(f"Write the answer once, or as `lang: answer | ...` with languages among {allowed}.")
        return dict.fromkeys(languages, text)
    forms = {lang.strip(): answer.strip() for lang, _, answer in named}
    if not all(forms.values()):
        raise ValueError(f"An answer form is empty in {text!r}.")
    first = next(iter(forms.values()))
    return {lang: forms.get(lang, first) for lang in languages}


@dataclass
class EditBlock:
    """One edit of the "Several edits" tab: made in `language`; `prompts` and `answers` per language (the editor's
    order), the editing language's among them."""

    language: str
    prompts: dict[str, str]
    answers: dict[str, str]

    @property
    def request(self) -> tuple[str, str, str]:
        """The `(prompt, answer, language)` request of `LimeEditor.edit_many`."""
        return self.prompts[self.language], self.answers[self.language], self.language


def _edit_line(line: str, languages: Sequence[str]) -> tuple[str, str, str | None]:
    """`lang: prompt => answer` (the answer may be left out) as `(lang, prompt, answer or None)`."""
    lang, sep, rest = line.partition(":")
    lang = lang.strip()
    if not sep or lang not in languages:
        raise ValueError(f"Write `lang: prompt => answer` with a language among {list(languages)}; got {line!r}.")
    prompt, arrow, answer = rest.rpartition(ANSWER_ARROW) if ANSWER_ARROW in rest else (rest, "", "")
    if not prompt.strip() or (arrow and not answer.strip()):
        raise ValueError(f"An empty prompt or answer in {line!r}.")
    return lang, prompt.strip(), answer.strip() if arrow else None


def _edit_block(lines: list[str], languages: Sequence[str]) -> EditBlock:
    """A block's first line is the edit (with its answer); the others the same question in other languages."""
    parsed = [_edit_line(line, languages) for line in lines]
    language, _, answer = parsed[0]
    if answer is None:
        raise ValueError(f"The edit {lines[0]!r} needs its new answer: `{language}: prompt {ANSWER_ARROW} answer`.")
    seen = [lang for lang, _, _ in parsed]
    twice = sorted({lang for lang in seen if seen.count(lang) > 1})
    if twice:
        raise ValueError(f"The edit {lines[0]!r} gives languages {twice} twice; one line per language.")
    prompts = {lang: prompt for lang, prompt, _ in parsed}
    answers = {lang: form or answer for lang, _, form in parsed}
    order = [lang for lang in languages if lang in prompts]
    return EditBlock(language, {lang: prompts[lang] for lang in order}, {lang: answers[lang] for lang in order})


def parse_edit_blocks(text: str, languages: Sequence[str], max_edits: int = MAX_EDITS) -> list[EditBlock]:
    """The edits of the "Several edits" tab: blocks of `lang: prompt => answer` lines separated by blank lines (see
    the module docstring); at most `max_edits`."""
    blocks: list[list[str]] = [[]]
    for line in (text or "").splitlines():
        if line.strip():
            blocks[-1].append(line.strip())
        elif blocks[-1]:
            blocks.append([])
    blocks = [block for block in blocks if block]
    if not blocks:
        raise ValueError(f"Give at least one edit: `lang: prompt {ANSWER_ARROW} answer`.")
    if len(blocks) > max_edits:
        raise ValueError(f"{len(blocks)} edits: this page makes at most {max_edits} at once.")
    return [_edit_block(block, languages) for block in blocks]


def edits_text(examples: Sequence[Sequence[str]], languages: Sequence[str]) -> str:
    """Single-edit examples (`[prompts, language, answer]`) as one "Several edits" text, each edit made in the next
    language in turn."""
    blocks = []
    for index, (prompts_text, _, answer_text) in enumerate(examples):
        prompts, forms = parse_prompts(prompts_text, languages), parse_answers(answer_text, languages)
        order = list(prompts)
        first = order[index % len(order)]
        lines = [f"{lang}: {prompts[lang]} {ANSWER_ARROW} {forms[lang]}" for lang in [first, *order]]
        blocks.append("\n".join(dict.fromkeys(lines)))  # the edit first, then the other languages
    return "\n\n".join(blocks)


# ------------------------------------------------------------------------------------------------ the demo
class EditDemo:
    """What the app does, without the UI: answers and likelihoods in every language, edits, reverts.

    Args:
        editor ([`LimeEditor`]): A masked-LM editor with languages.
        candidates (`dict[str, list[str]]`, *optional*): Per language, the answers to rank (mLAMA's typed querying);
            answers are decoded at the masks when `None`.
    """

    def __init__(self, editor: LimeEditor, candidates: dict[str, list[str]] | None = None) -> None:
        if editor.task != "masked_lm" or not editor.languages:
            raise ValueError("The app shows masked-LM editors with languages (prompts with a [MASK] per language).")
        self.editor = editor
        self.candidates = candidates
        self.edits: list[Any] = []
        self._lock = threading.Lock()  # one model, shared by every browser session

    @property
    def languages(self) -> list[str]:
        return list(self.editor.languages)

    def _answer(self, lang: str, prompt: str, form: str) -> str:
        if self.candidates is None:
            return self.editor.predict(prompt, num_tokens=len(self.editor.tokenizer.tokenize(form)) or 1)
        options = list(dict.fromkeys([*self.candidates.get(lang, []), form]))
        return self.editor.predict(prompt, candidates=options)

    def _answers(self, block: EditBlock) -> dict[str, str]:
        return {lang: self._answer(lang, prompt, block.answers[lang]) for lang, prompt in block.prompts.items()}

    def _read(self, prompts: dict[str, str], forms: dict[str, str]) -> dict[str, tuple[str, float]]:
        return {
            lang: (self._answer(lang, prompt, forms[lang]), math.exp(self.editor.score(prompt, forms[lang])))
            for lang, prompt in prompts.items()
        }

    def edit(self, prompts_text: str, language: str, answer_text: str) -> tuple[list[list[str]], Any, str]:
        """Edit `language`'s prompt to its form of the answer; the table, the heatmap and a status line."""
        prompts, forms = parse_prompts(prompts_text, self.languages), parse_answers(answer_text, self.languages)
        if language not in prompts:
            raise ValueError(f"No prompt in the editing language {language!r}; add a `{language}: ...` line.")
        with self._lock:
            before = self._read(prompts, forms)
            self.edits.append(self.editor.edit(prompts[language], forms[language], language=language))
            after = self._read(prompts, forms)
        held = sum(after[lang][0] == forms[lang] for lang in prompts)
        status = (
            f"Edited in {language}: {prompts[language]!r} → {forms[language]!r}. It holds in {held} of "
            f"{len(prompts)} languages. {len(self.edits)} edit(s) applied."
        )
        return _rows(prompts, forms, before, after), heatmap(prompts, before, after), status

    def revert(self, prompts_text: str, answer_text: str) -> tuple[list[list[str]], Any, str]:
        """Revert every edit; the answers of the base model again."""
        with self._lock:
            self.editor.revert_all()
            self.edits.clear()
            prompts = parse_prompts(prompts_text, self.languages)
            forms = parse_answers(answer_text, self.languages) if answer_text.strip() else None
            now = self._read(prompts, forms) if forms else {}
        rows = _rows(prompts, forms, now, now) if forms else []
        return rows, heatmap(prompts, now, now) if forms else None, "Reverted: the base model, bit for bit."

    def edit_many(self, edits_text: str, mode: str = "batch") -> tuple[list[list[str]], list[list[str]], str]:
        """Apply the edits of `edits_text` together (`LimeEditor.edit_many`); which held in each language (a table of
        edits × languages), every answer before and after, and a status line."""
        blocks = parse_edit_blocks(edits_text, self.languages)
        with self._lock:
            before = [self._answers(block) for block in blocks]
            group = self.editor.edit_many([block.request for block in blocks], mode=mode)
            self.edits.append(group)
            after = [self._answers(block) for block in blocks]
        held = [[after[i][lang] == block.answers[lang] for lang in block.prompts] for i, block in enumerate(blocks)]
        own = sum(after[i][block.language] == block.answers[block.language] for i, block in enumerate(blocks))
        status = (
            f"{len(blocks)} edit(s) applied ({mode}). In their editing language {own} of {len(blocks)} hold "
            f"(over the whole vocabulary, every answer token the argmax: {sum(group.held)}); in every language given: "
            f"{sum(all(row) for row in held)}. {len(self.edits)} edit group(s) applied."
        )
        return self._held_table(blocks, after), _many_rows(blocks, before, after), status

    def revert_many(self, edits_text: str) -> tuple[list[list[str]], list[list[str]], str]:
        """Revert every edit; the base model's answers to the edits of `edits_text` (when given)."""
        with self._lock:
            self.editor.revert_all()
            self.edits.clear()
            blocks = parse_edit_blocks(edits_text, self.languages) if (edits_text or "").strip() else []
            now = [self._answers(block) for block in blocks]
        status = "Reverted: the base model, bit for bit."
        return self._held_table(blocks, now), _many_rows(blocks, now, now), status

    def _held_table(self, blocks: list[EditBlock], answers: list[dict[str, str]]) -> list[list[str]]:
        """One row per edit: the edit, then per language `yes: answer` / `no: answer` (`""`: not given)."""
        rows = []
        for index, (block, given) in enumerate(zip(blocks, answers, strict=True)):
            cells = [_held_cell(given[lang], block.answers[lang]) if lang in given else "" for lang in self.languages]
            prompt, answer, language = block.request
            rows.append([f"{index + 1}. {language}: {prompt} → {answer}", *cells])
        return rows

    @property
    def held_headers(self) -> list[str]:
        """The columns of the table of `edit_many`: the edit, then every language."""
        return ["edit", *self.languages]


def _held_cell(answer: str, wanted: str) -> str:
    return f"{'yes' if answer == wanted else 'no'}: {answer}"


def _many_rows(blocks: list[EditBlock], before: list[dict], after: list[dict]) -> list[list[str]]:
    return [
        [str(index + 1), lang + (" (edited)" if lang == block.language else ""), prompt, block.answers[lang],
         before[index][lang], after[index][lang], "yes" if after[index][lang] == block.answers[lang] else "no"]
        for index, block in enumerate(blocks)
        for lang, prompt in block.prompts.items()
    ]  # fmt: skip


def _rows(prompts, forms, before, after) -> list[list[str]]:
    return [
        [lang, prompt, forms[lang], before[lang][0], after[lang][0], "yes" if after[lang][0] == forms[lang] else "no"]
        for lang, prompt in prompts.items()
    ]


def heatmap(prompts: dict[str, str], before: dict, after: dict):
    """Languages × (before, after): the probability of each language's form of the new answer (geometric mean over
    its tokens)."""
    from matplotlib.figure import Figure

    languages = list(prompts)
    values = [[before[lang][1], after[lang][1]] for lang in languages]
    figure = Figure(figsize=(3.6, 0.45 * len(languages) + 1.2), layout="constrained")
    axes = figure.add_subplot()
    image = axes.imshow(values, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    axes.set_xticks([0, 1], ["before", "after"])
    axes.set_yticks(range(len(languages)), languages)
    for row, pair in enumerate(values):
        for col, value in enumerate(pair):
            axes.text(col, row, f"{value:.2f}", ha="center", va="center", color="white" if value < 0.6 else "black")
    figure.colorbar(image, ax=axes, shrink=0.8)
    return figure


# ------------------------------------------------------------------------------------------------ examples
def cldr_examples(languages: Sequence[str], n: int = 3, seed: int = EXAMPLES_SEED, label_language: str | None = None):
    """Held-out CLDR capitals as app examples (each edited to the next country's capital, in the first language),
    and every language's held-out capitals as the answers to rank. `None, None` when a language has no template.
    `label_language`: the names the editor's fact model knows (`make demo`'s: each language's own, `"own"`)."""
    from hf_lime.data import load_cldr_facts
    from hf_lime.data.cldr import cldr_languages

    if not set(languages) <= set(cldr_languages()):
        return None, None
    test = load_cldr_facts(list(languages), relations=("capital",), seed=seed, label_language=label_language)["test"]
    rows = [dict(zip(row["languages"], zip(row["prompts"], row["targets"], strict=True), strict=True)) for row in test]
    candidates = {lang: sorted({row[lang][1] for row in rows}) for lang in languages}
    examples = []
    for index in range(min(n, len(rows) - 1)):
        item, other = rows[index], rows[index + 1]
        prompts = "\n".join(f"{lang}: {item[lang][0].replace('[Y]', '[MASK]')}" for lang in languages)
        answer = " | ".join(f"{lang}: {other[lang][1]}" for lang in languages)
        examples.append([prompts, languages[0], answer])
    return examples, candidates


# ------------------------------------------------------------------------------------------------ the UI
def build_app(demo: EditDemo, examples: list[list[str]] | None = None):
    """The Gradio Blocks: `/edit`, `/revert`, `/edit_many` and `/revert_many` are also its API (`gradio_client`).
    `examples` (`[prompts, language, answer]` rows) fill both tabs: the "Several edits" tab's example makes them all
    at once, each in the next language."""
    import gradio as gr

    def guarded(function):
        def run(*args):
            try:
                return function(*args)
            except (ValueError, TypeError) as error:  # a user's mistake: shown in the page, not a traceback
                raise gr.Error(str(error)) from error

        return run

    with gr.Blocks(title="hf_lime: one edit, every language") as app:
        gr.Markdown(
            "## One edit, every language\nEdit a fact in one language with a LiME editor and see it change (or not) "
            "in the others; unrelated questions should keep their answers. **Revert** restores the base model."
        )
        with gr.Tab("One edit"):
            with gr.Row():
                with gr.Column(scale=3):
                    prompts = gr.Textbox(label="The question in each language (`lang: prompt` with [MASK])", lines=6)
                    language = gr.Dropdown(demo.languages, value=demo.languages[0], label="Edit in")
                    answer = gr.Textbox(label="New answer (one form, or `lang: form | lang: form`)")
                    with gr.Row():
                        edit_button = gr.Button("Edit", variant="primary")
                        revert_button = gr.Button("Revert")
                with gr.Column(scale=2):
                    gr.Markdown("**P(new answer)** in each language, before and after the edit")
                    figure = gr.Plot(show_label=False)
            status = gr.Markdown()
            table = gr.Dataframe(headers=HEADERS, label="Answers in every language", interactive=False)
            if examples:
                gr.Examples(examples, inputs=[prompts, language, answer])
        with gr.Tab("Several edits"):
            many_outputs = _many_edits_tab(gr, demo, guarded, examples)
        outputs = [table, figure, status]
        edit_button.click(guarded(demo.edit), [prompts, language, answer], outputs, api_name="edit")
        revert_button.click(guarded(demo.revert), [prompts, answer], outputs, api_name="revert")
        many_text, mode, many_edit, many_revert, many_tables = many_outputs
        many_edit.click(guarded(demo.edit_many), [many_text, mode], many_tables, api_name="edit_many")
        many_revert.click(guarded(demo.revert_many), [many_text], many_tables, api_name="revert_many")
    return app


def _many_edits_tab(gr: Any, demo: EditDemo, guarded: Any, examples: list[list[str]] | None) -> tuple:
    """The "Several edits" tab's components: its text, mode, two buttons and outputs (two tables, a status)."""
    gr.Markdown(
        f"One block per edit, blocks separated by a blank line. The block's first line is the edit, "
        f"`lang: prompt {ANSWER_ARROW} answer`, made in `lang`; its other lines the same question in other languages "
        f"(`lang: prompt {ANSWER_ARROW} that language's form of the answer`), read but not edited. At most "
        f"{MAX_EDITS} edits, applied together with `edit_many`; **Revert** removes them all."
    )
    text = gr.Textbox(label=f"Edits (`lang: prompt {ANSWER_ARROW} answer`, one block per edit)", lines=10)
    mode = gr.Radio(["batch", "sequential"], value="batch", label="Mode (batch: all at once; sequential: in turn)")
    with gr.Row():
        edit_button = gr.Button("Edit all", variant="primary")
        revert_button = gr.Button("Revert")
    status = gr.Markdown()
    held = gr.Dataframe(headers=demo.held_headers, label="Does the new answer hold? (and the answer now)",
                        interactive=False)  # fmt: skip
    details = gr.Dataframe(headers=MANY_HEADERS, label="Every answer before and after", interactive=False)
    if examples:
        gr.Examples([[edits_text(examples, demo.languages), "batch"]], inputs=[text, mode])
    return text, mode, edit_button, revert_button, [held, details, status]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--editor", default=os.getenv("LIME_EDITOR", "outputs/demo"), help="Folder or Hub id.")
    parser.add_argument("--candidates", choices=["cldr", "none"], default="cldr")
    parser.add_argument("--host", default=os.getenv("GRADIO_SERVER_NAME", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.getenv("GRADIO_SERVER_PORT", "7860")))
    args = parser.parse_args()
    editor = LimeEditor.from_pretrained(args.editor)
    label_language = (editor.training_info or {}).get("label_language")  # as the editor's data named things
    examples, candidates = (None, None)
    if args.candidates == "cldr":
        examples, candidates = cldr_examples(editor.languages, label_language=label_language)
    build_app(EditDemo(editor, candidates), examples).launch(server_name=args.host, server_port=args.port)


if __name__ == "__main__":
    main()
