"""The `hf-lime` command on a tiny saved editor (synthetic fact world)."""

from __future__ import annotations

import json

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
