"""Pair generation (sampling, dedup, storing) and the pairs -> label -> export -> import CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from prefloop.cli import main
from prefloop.errors import PrefloopError
from prefloop.feedback.pairs import (
    PairsConfig,
    PromptItem,
    generate_pairs,
    load_prompts,
    sample_responses,
    store_pairs,
)
from prefloop.feedback.store import PreferenceStore


@pytest.fixture
def store(tmp_path: Path):
    with PreferenceStore(f"sqlite:///{tmp_path / 'prefs.db'}") as st:
        yield st


def test_store_pairs_drops_identical_and_empty_and_stores_all_pairs(store: PreferenceStore) -> None:
    prompts = [PromptItem("a"), PromptItem("b"), PromptItem("c")]
    responses = [["x", "y", "z"], ["same", "same", "other"], ["only", "only", "  "]]
    s = store_pairs(
        store, prompts, responses, model_version="sft-v3", sampling={"top_p": 0.9}, source="t"
    )
    assert (s.prompts, s.responses, s.comparisons) == (3, 5, 3 + 1)
    assert (s.dropped_identical, s.dropped_empty, s.prompts_without_pair) == (2, 1, 1)
    pending = store.pending_comparisons()
    assert [(v.prompt, v.response_a, v.response_b) for v in pending] == [
        ("a", "x", "y"),
        ("a", "x", "z"),
        ("a", "y", "z"),
        ("b", "same", "other"),
    ]
    from prefloop.feedback.models import Response

    with store.session() as session:
        rows = session.query(Response).all()
        assert {(r.model_version, r.sampling["top_p"]) for r in rows} == {("sft-v3", 0.9)}


def test_sample_responses_is_seeded_and_prompt_major(make_model, tokenizer) -> None:
    model = make_model("gpt2")
    cfg = PairsConfig(k=3, max_new_tokens=8, seed=5, batch_size=4)
    prompts = [PromptItem("the movie was"), PromptItem("this product")]
    first = sample_responses(model, tokenizer, prompts, cfg)
    assert [len(r) for r in first] == [3, 3]
    assert first == sample_responses(model, tokenizer, prompts, cfg)
    cfg.seed = 6
    assert first != sample_responses(model, tokenizer, prompts, cfg)


def test_load_prompts_formats_and_errors(tmp_path: Path) -> None:
    convo = [{"role": "user", "content": "Hi"}]
    path = tmp_path / "prompts.jsonl"
    path.write_text(json.dumps({"prompt": "plain"}) + "\n" + json.dumps({"messages": convo}) + "\n")
    items = load_prompts(path)
    assert items == [PromptItem("plain"), PromptItem("user: Hi", convo)]
    path.write_text(
        json.dumps({"prompt": "ok"}) + "\n" + json.dumps({"messages": convo * 0}) + "\n"
    )
    with pytest.raises(PrefloopError, match="row 2, field 'messages'"):
        load_prompts(path)
    ends_with_assistant = [*convo, {"role": "assistant", "content": "Hello"}]
    path.write_text(json.dumps({"messages": ends_with_assistant}) + "\n")
    with pytest.raises(PrefloopError, match="must end with a user turn"):
        load_prompts(path)
    path.write_text(json.dumps({"title": "x"}) + "\n")
    with pytest.raises(PrefloopError, match="row 1, field 'prompt'"):
        load_prompts(path)


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        (PairsConfig(k=1, default_prompts=2), "k must be at least 2"),
        (PairsConfig(default_prompts=0), "either --prompts"),
        (PairsConfig(prompts="x.jsonl", default_prompts=3), "either --prompts"),
    ],
)
def test_bad_settings(store: PreferenceStore, cfg: PairsConfig, message: str) -> None:
    with pytest.raises(PrefloopError, match=message):
        generate_pairs(store, cfg, "unused", "unused")


@pytest.mark.slow
def test_cli_pairs_label_export_import(tmp_path: Path, make_model, tokenizer, capsys) -> None:
    from prefloop.models.lm import save_pretrained
    from prefloop.workspace import Workspace

    ws = Workspace.init(tmp_path / "ws")
    save_pretrained(make_model("gpt2"), tokenizer, tmp_path / "tiny")
    version = ws.register(tmp_path / "tiny", "sft").name
    w = ["--workspace", str(ws.root)]
    assert main(["pairs", *w, "--model", version, "--default-prompts", "6", "-k", "3",
                 "--max-new-tokens", "8", "--top-p", "0.95"]) == 0  # fmt: skip
    assert f"pairs from {version}: 6 prompts" in capsys.readouterr().out
    with PreferenceStore(ws.db_url) as store:
        n_pairs = store.stats()["comparisons"]
        assert n_pairs >= 6
    assert main(["label", *w, "--simulated", "--agreement", "0.8", "--tie-epsilon", "0"]) == 0
    assert f"labelled {n_pairs} comparisons" in capsys.readouterr().out
    out = tmp_path / "prefs.jsonl"
    assert main(["export", *w, str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == n_pairs and set(rows[0]) == {"prompt", "chosen", "rejected"}
    assert main(["export", *w, str(out)]) == 2  # exists: a one-line error, exit code 2
    assert "already exists" in capsys.readouterr().err
    assert main(["import", *w, str(out), "--annotator", "again"]) == 0
    with PreferenceStore(ws.db_url) as store:
        assert store.stats()["labels_by_kind"] == {"simulated": n_pairs, "imported": n_pairs}
    assert main(["label", *w]) == 2  # only --simulated runs here
