"""The `hf-lime` command on a tiny saved editor (synthetic fact world)."""

from __future__ import annotations

import json
import re

import pytest
from helpers_facts import LANGUAGES, build_fact_tokenizer, fact_items, pretrained_fact_model

from hf_lime import LimeConfig, LimeEditor
from hf_lime.cli import main


@pytest.fixture(scope="module")
def editor_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    tokenizer, items = build_fact_tokenizer(), fact_items()
    base = pretrained_fact_model(tokenizer, items, steps=150)
    base.save_pretrained(root / "base")
    tokenizer.save_pretrained(root / "base")
    config = LimeConfig(languages=LANGUAGES, editor="ft", ft_optimizer="adam", ft_lr=0.05, ft_steps=20)
    editor = LimeEditor.from_base_model(base, config, tokenizer)
    editor.save_pretrained(root / "editor", base_model_name_or_path=str(root / "base"))
    return root / "editor"


PROMPT = "subj1 was born in [MASK] ."


def test_predict(editor_dir, capsys):
    assert main(["predict", "--editor", str(editor_dir), "--text", PROMPT]) == 0
    answer = capsys.readouterr().out.strip()
    assert answer.startswith("city")
    assert answer == LimeEditor.from_pretrained(editor_dir).predict(PROMPT)


def test_edit_shows_before_and_after_in_other_languages(editor_dir, capsys):
    before = LimeEditor.from_pretrained(editor_dir).predict(PROMPT)
    target = "city4" if before != "city4" else "city3"
    code = main([
        "edit", "--editor", str(editor_dir), "--text", PROMPT, "--target", target,
        "--language", "en", "--show", "fr=subj1 est né à [MASK] .", "de=subj1 ist in [MASK] geboren .",
    ])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    rows = {line.split()[0]: line.split()[1:3] for line in out.splitlines()[2:]}
    assert rows["en"] == [before, target]
    assert set(rows) == {"en", "fr", "de"}


def write_lines(path, lines: list[str]):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


GOOD_LINES = [
    json.dumps({"prompt": "subj1 was born in [MASK] .", "answer": "city4", "language": "en"}),
    "",  # blank lines are skipped (and counted)
    json.dumps({"prompt": "subj2 est né à [MASK] .", "answer": "city5", "language": "fr"}),
]


@pytest.mark.parametrize("mode", ["batch", "sequential"])
def test_edit_file_applies_the_edits_reports_which_held_and_exports_them(editor_dir, tmp_path, capsys, mode):
    edits = write_lines(tmp_path / "edits.jsonl", GOOD_LINES)
    lora = tmp_path / "lora"
    code = main(["edit", "--editor", str(editor_dir), "--file", str(edits), "--mode", mode,
                 "--output_lora", str(lora)])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    rows = {line.split()[0]: line.split()[1:3] for line in out.splitlines()[1:3]}
    assert set(rows) == {"1", "3"} and [lang for _, lang in rows.values()] == ["en", "fr"]
    held = sum(status == "yes" for status, _ in rows.values())
    assert f"{held} of 2 edits held." in out
    assert json.loads((lora / "adapter_config.json").read_text())["peft_type"] == "LORA"


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        ('{"prompt": "subj3 was born in [MASK] .", "answer": "city1", ', r"line 2: invalid JSON"),
        ('["subj3 was born in [MASK] .", "city1", "en"]', r"line 2: expected a JSON object, got list"),
        ('{"prompt": "subj3 was born in [MASK] .", "answer": "city1"}', r"line 2: missing key\(s\) \['language'\]"),
        ('{"prompt": "subj3 was born in [MASK] .", "answer": 1.5, "language": "en"}', r"line 2: `answer` must be"),
        ('{"prompt": "subj3 was born in [MASK] .", "answer": "city1", "language": "xx"}',
         r"line 2: unknown language 'xx'; this editor knows \['en', 'fr', 'de'\]"),
        ('{"prompt": "subj3 was born in .", "answer": "city1", "language": "en"}', r"line 2: .*one placeholder"),
    ],
)  # fmt: skip
def test_edit_file_errors_name_the_line_exit_2_and_apply_nothing(editor_dir, tmp_path, capsys, bad_line, message):
    edits = write_lines(tmp_path / "edits.jsonl", [GOOD_LINES[0], bad_line, GOOD_LINES[2]])
    lora = tmp_path / "lora"
    code = main(["edit", "--editor", str(editor_dir), "--file", str(edits), "--output_lora", str(lora)])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == "" and not lora.exists()
    last = captured.err.splitlines()[-1]  # (loading the editor may draw a progress bar before it)
    assert "Traceback" not in captured.err
    assert re.match(f"hf-lime edit: error: {re.escape(str(edits))}, {message}", last), last


def test_edit_file_is_refused_with_single_edit_options_or_when_empty(editor_dir, tmp_path, capsys):
    edits = write_lines(tmp_path / "edits.jsonl", GOOD_LINES)
    assert main(["edit", "--editor", str(editor_dir), "--file", str(edits), "--target", "city1"]) == 2
    assert "drop --target" in capsys.readouterr().err
    assert main(["edit", "--editor", str(editor_dir), "--text", "subj1 was born in [MASK] ."]) == 2
    assert "--text needs --target" in capsys.readouterr().err
    empty = write_lines(tmp_path / "empty.jsonl", [""])
    assert main(["edit", "--editor", str(editor_dir), "--file", str(empty)]) == 2
    assert "holds no edit requests" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # --text and --file together
        main(["edit", "--editor", str(editor_dir), "--file", str(edits), "--text", "x [MASK]", "--target", "y"])


def test_evaluate_writes_a_report(editor_dir, tmp_path, capsys, monkeypatch):
    import hf_lime.cli as cli

    monkeypatch.setattr(cli, "_evaluation_items", lambda args, languages: fact_items())
    out = tmp_path / "report"
    code = main(["evaluate", "--editor", str(editor_dir), "--n_edits", "2", "--n_retain", "2",
                 "--output_dir", str(out)])  # fmt: skip
    assert code == 0
    assert "reliability" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["es_matrix"]) == set(LANGUAGES)


def test_user_errors_exit_with_code_2(editor_dir, capsys):
    code = main(["edit", "--editor", str(editor_dir), "--text", "subj1 was born in [MASK] .", "--target", "city4",
                 "--language", "xx"])  # fmt: skip
    assert code == 2
    assert "Unknown language" in capsys.readouterr().err
    assert main(["predict", "--editor", str(editor_dir / "missing"), "--text", "x"]) == 2


def test_hub_and_config_errors_are_one_line_with_code_2(editor_dir, tmp_path, capsys):
    # a Hub id that is not cached while offline (the tests run with HF_HUB_OFFLINE=1)
    assert main(["predict", "--editor", "hf-lime/not-cached", "--text", "x [MASK] ."]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "hf-lime predict: error:" in err and "Traceback" not in err
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "adapter_config.json").write_text('{"a":' * 5000 + "1" + "}" * 5000)
    (broken / "adapter_model.safetensors").write_bytes(b"")
    assert main(["predict", "--editor", str(broken), "--text", "x [MASK] ."]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error:" in err and "Traceback" not in err


def test_parser_rejects_unknown_model_names():
    with pytest.raises(SystemExit):
        main(["prepare-model", "gpt-5", "--output", "x"])


def test_prepare_model_refuses_an_xnli_split_for_another_model(tmp_path, capsys):
    # refused before any model is built: the split belongs to the XNLI classifier only
    split = ["--split_sizes", "0.6", "0.05", "0.35"]
    code = main(["prepare-model", "me5-small-facts", "--output", str(tmp_path), *split])
    assert code == 2 and "'me5-small-xnli' only" in capsys.readouterr().err


def test_push_takes_a_token_and_a_license_and_reaches_the_hub(editor_dir, tmp_path, capsys):
    from hub_server import running_hub

    with running_hub(tmp_path) as hub:
        code = main(["push", "--editor", str(editor_dir), "--repo_id", "org/cli-editor", "--token", "hf_test",
                     "--license", "apache-2.0"])  # fmt: skip
        assert code == 0, capsys.readouterr().err
        files = hub.files("org/cli-editor")
    assert {"adapter_config.json", "lime_editor.json"} <= set(files)
    assert b"license: apache-2.0" in files["README.md"]


def test_every_option_has_help_and_shows_its_default(capsys):
    import argparse

    from hf_lime.cli import _parser

    commands = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    for name, command in commands.items():
        undocumented = [a.dest for a in command._actions if not a.help]
        assert not undocumented, f"hf-lime {name}: options without help: {undocumented}"
    for command in ("edit", "predict", "evaluate", "push", "prepare-model"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = capsys.readouterr().out
        assert "--help" in text and ("(default:" in text)
    with pytest.raises(SystemExit):
        main(["push", "--help"])
    assert "--token" in capsys.readouterr().out
