"""TRL preference format: export (plain/conversational; JSONL/Parquet/datasets), import with
row-level validation (all or nothing), and TRL's own trainers reading what we write."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from prefloop.errors import PrefloopError
from prefloop.feedback.formats import export_file, import_file, read_preferences
from prefloop.feedback.models import ComparisonIn, LabelIn, PromptIn, ResponseIn
from prefloop.feedback.store import PreferenceStore, StoreTransaction

CONVO = [
    {"role": "system", "content": "You review products."},
    {"role": "user", "content": "How is the blender?"},
]


@pytest.fixture
def store(tmp_path: Path):
    with PreferenceStore(f"sqlite:///{tmp_path / 'prefs.db'}") as st:
        yield st


def _labelled(store: PreferenceStore, conversational: bool = False) -> None:
    """Four comparisons labelled a, b, tie, both_bad by one human."""
    with store.transaction() as tx:
        prompts = [PromptIn(f"The movie {i} was", source="s") for i in range(4)]
        if conversational:
            prompts[1] = PromptIn("rendered", messages=CONVO, source="s")
        pids = tx.add_prompts(prompts)
        rids = tx.add_responses(
            [
                ResponseIn(p, f"{word} {i}")
                for i, p in enumerate(pids)
                for word in ("great", "awful")
            ]
        )
        cids = tx.add_comparisons(
            [ComparisonIn(p, rids[2 * i], rids[2 * i + 1], "s") for i, p in enumerate(pids)]
        )
        ann = tx.ensure_annotator("hana", "human")
        tx.add_labels(
            ann, [LabelIn(c, ch) for c, ch in zip(cids, ("a", "b", "tie", "both_bad"), strict=True)]
        )


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("fmt", ["jsonl", "parquet", "datasets"])
def test_export_plain_rows_in_every_format(
    store: PreferenceStore, tmp_path: Path, fmt: str
) -> None:
    from datasets import load_dataset, load_from_disk

    _labelled(store)
    out = tmp_path / {"jsonl": "p.jsonl", "parquet": "p.parquet", "datasets": "p_ds"}[fmt]
    path, n = export_file(store, out, fmt)
    assert n == 2  # the tie and both-bad labels are not chosen/rejected pairs
    if fmt == "datasets":
        ds = load_from_disk(str(path))
    else:
        ds = load_dataset(
            "json" if fmt == "jsonl" else "parquet", data_files=str(path), split="train"
        )
    assert ds.column_names == ["prompt", "chosen", "rejected"]
    assert ds[0] == {"prompt": "The movie 0 was", "chosen": "great 0", "rejected": "awful 0"}
    assert ds[1] == {"prompt": "The movie 1 was", "chosen": "awful 1", "rejected": "great 1"}


def test_export_conversational_ties_and_filters(store: PreferenceStore, tmp_path: Path) -> None:
    _labelled(store, conversational=True)
    path, n = export_file(store, tmp_path / "c.jsonl", include_ties=True)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert n == 4 and [r["tie"] for r in rows] == [False, False, True, True]
    assert rows[0]["prompt"] == [{"role": "user", "content": "The movie 0 was"}]
    assert rows[1]["prompt"] == CONVO
    assert rows[1]["chosen"] == [{"role": "assistant", "content": "awful 1"}]
    with pytest.raises(PrefloopError, match="cannot be written as plain text"):
        export_file(store, tmp_path / "p.jsonl", style="plain")
    with pytest.raises(PrefloopError, match="already exists"):
        export_file(store, path)
    with pytest.raises(PrefloopError, match="nothing to export"):
        export_file(store, tmp_path / "none.jsonl", kinds=["simulated"])
    store.set_annotator_disabled("hana")
    with pytest.raises(PrefloopError, match="nothing to export"):
        export_file(store, tmp_path / "none.jsonl")
    assert export_file(store, tmp_path / "d.jsonl", include_disabled=True)[1] == 2


def test_import_conversational_trl_file(store: PreferenceStore, tmp_path: Path) -> None:
    rows = [
        {
            "prompt": CONVO,
            "chosen": [{"role": "assistant", "content": "It crushes ice well."}],
            "rejected": [{"role": "assistant", "content": "Buy a spoon."}],
        },
        {  # implicit prompt (as in HH-RLHF in TRL's format): the shared turns are the prompt
            "chosen": [*CONVO, {"role": "assistant", "content": "Quiet and strong."}],
            "rejected": [*CONVO, {"role": "assistant", "content": "No idea."}],
        },
    ]
    summary = import_file(store, _jsonl(tmp_path / "conv.jsonl", rows))
    assert (summary.rows, summary.prompts, summary.annotator) == (2, 1, "import:conv.jsonl")
    prefs = store.preferences(kinds=["imported"])
    assert [p.messages for p in prefs] == [CONVO, CONVO]
    assert [(p.chosen, p.rejected) for p in prefs] == [
        ("It crushes ice well.", "Buy a spoon."),
        ("Quiet and strong.", "No idea."),
    ]
    out, _ = export_file(store, tmp_path / "again.jsonl")
    again = [json.loads(line) for line in out.read_text().splitlines()]
    assert again[0] == rows[0]
    assert store.pending_comparisons() == []  # imported comparisons arrive labelled


def test_import_plain_hh_implicit_prompt_and_ties(store: PreferenceStore, tmp_path: Path) -> None:
    rows = [
        {
            "chosen": "\n\nHuman: Hi\n\nAssistant: Hello!",
            "rejected": "\n\nHuman: Hi\n\nAssistant: Go.",
        },
        {"prompt": "Rate it:", "chosen": " fine", "rejected": " meh", "tie": True},
    ]
    summary = import_file(store, _jsonl(tmp_path / "hh.jsonl", rows), annotator="hh")
    assert summary.ties == 1
    (p,) = store.preferences()
    assert (p.prompt, p.chosen, p.rejected) == ("\n\nHuman: Hi\n\nAssistant:", " Hello!", " Go.")
    assert [p.choice for p in store.preferences(include_ties=True)] == ["a", "tie"]


GOOD = {"prompt": "p", "chosen": "yes", "rejected": "no"}
BAD_ROWS = [
    (
        {"prompt": "p", "chosen": "same", "rejected": "same"},
        "row 2, field 'rejected'",
        "same response",
    ),
    ({"prompt": "p", "chosen": "  ", "rejected": "no"}, "row 2, field 'chosen'", "empty"),
    ({"prompt": "p", "chosen": "yes"}, "row 2, field 'rejected'", "missing field"),
    ({"chosen": "yes", "rejected": "no"}, "row 2, field 'prompt'", "missing field"),
    ({"prompt": "p", "chosen": 3, "rejected": "no"}, "row 2, field 'chosen'", "expected a string"),
    (
        {
            "prompt": CONVO,
            "chosen": [{"role": "assistant", "content": "a"}],
            "rejected": [{"role": "assistant", "content": "b"}],
        },
        "row 2",
        "conversational row in a file of plain rows",
    ),
    (
        {"prompt": [{"role": "robot", "content": "x"}], "chosen": [], "rejected": []},
        "row 2, field 'chosen'",
        "expected a list of messages",
    ),
    (
        {"prompt": "p", "chosen": "yes", "rejected": "no", "tie": "maybe"},
        "row 2, field 'tie'",
        "true or false",
    ),
]


@pytest.mark.parametrize(("bad", "where", "message"), BAD_ROWS)
def test_bad_rows_name_file_row_field_and_write_nothing(
    store: PreferenceStore, tmp_path: Path, bad: dict, where: str, message: str
) -> None:
    path = _jsonl(tmp_path / "bad.jsonl", [GOOD, bad, GOOD])
    with pytest.raises(PrefloopError) as err:
        import_file(store, path)
    text = str(err.value)
    assert text.startswith(f"{path}, {where}") and message in text, text
    assert store.stats()["prompts"] == 0 and store.stats()["annotators"] == 0


def test_conversational_rows_validate_roles_and_answers(tmp_path: Path) -> None:
    one = {"role": "assistant", "content": "a"}
    cases = [
        (
            {"prompt": [{"role": "robot", "content": "x"}], "chosen": [one], "rejected": [one]},
            "field 'prompt[0].role'",
        ),
        ({"prompt": CONVO, "chosen": [one, one], "rejected": [one]}, "field 'chosen'"),
        ({"prompt": CONVO, "chosen": [one], "rejected": [one]}, "same response"),
    ]
    for row, message in cases:
        with pytest.raises(PrefloopError, match=message.replace("[", r"\[")):
            read_preferences(_jsonl(tmp_path / "c.jsonl", [row]))


def test_import_is_one_transaction(store: PreferenceStore, tmp_path: Path, monkeypatch) -> None:
    path = _jsonl(tmp_path / "ok.jsonl", [GOOD, {**GOOD, "chosen": "sure"}])

    def fail(*args, **kwargs):
        raise PrefloopError("simulated failure after prompts, responses and comparisons")

    monkeypatch.setattr(StoreTransaction, "add_labels", fail)
    with pytest.raises(PrefloopError, match="simulated failure"):
        import_file(store, path)
    stats = store.stats()
    assert stats["prompts"] == stats["responses"] == stats["comparisons"] == 0


def test_import_parquet_and_datasets_round_trip(store: PreferenceStore, tmp_path: Path) -> None:
    _labelled(store)
    for fmt, name in (("parquet", "x.parquet"), ("datasets", "x_ds")):
        path, n = export_file(store, tmp_path / name, fmt, kinds=["human"])
        assert import_file(store, path).rows == n == 2
    assert len(store.preferences(kinds=["imported"])) == 4


@pytest.mark.slow
@pytest.mark.parametrize("conversational", [False, True])
def test_trl_reward_trainer_trains_a_step_on_the_export(
    store: PreferenceStore, tmp_path: Path, tokenizer, conversational: bool
) -> None:
    import torch
    from datasets import load_dataset
    from transformers import GPT2Config, GPT2ForSequenceClassification
    from trl import RewardConfig, RewardTrainer

    _labelled(store, conversational=conversational)
    path, _ = export_file(store, tmp_path / "train.jsonl")
    dataset = load_dataset("json", data_files=str(path), split="train")
    if conversational:  # TRL renders conversations with the tokenizer's chat template
        tokenizer = _with_chat_template(tokenizer)
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=64,
        n_embd=32,
        n_layer=1,
        n_head=2,
        num_labels=1,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = GPT2ForSequenceClassification(config)
    before = [p.detach().clone() for p in model.parameters()]
    args = RewardConfig(
        output_dir=str(tmp_path / "rm"),
        max_steps=1,
        per_device_train_batch_size=2,
        use_cpu=True,
        bf16=False,
        report_to="none",
        save_strategy="no",
        max_length=64,
    )
    trainer = RewardTrainer(
        model=model, args=args, train_dataset=dataset, processing_class=tokenizer
    )
    result = trainer.train()
    assert result.global_step == 1 and torch.isfinite(torch.tensor(result.training_loss))
    assert any((a != b).any() for a, b in zip(before, model.parameters(), strict=True))


def _with_chat_template(tokenizer):
    tok = tokenizer.__class__.from_pretrained(_save(tokenizer))
    tok.chat_template = (
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant: {% endif %}"
    )
    return tok


def _save(tokenizer) -> str:
    import tempfile

    path = tempfile.mkdtemp(prefix="tok-")
    tokenizer.save_pretrained(path)
    return path


@pytest.mark.slow
def test_trl_dpo_trainer_trains_a_step_on_the_export(
    store: PreferenceStore, tmp_path: Path, tokenizer
) -> None:
    import torch
    from datasets import load_dataset
    from transformers import GPT2Config, GPT2LMHeadModel
    from trl import DPOConfig, DPOTrainer

    _labelled(store)
    path, _ = export_file(store, tmp_path / "train.parquet")
    dataset = load_dataset("parquet", data_files=str(path), split="train")
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=64,
        n_embd=32,
        n_layer=1,
        n_head=2,
        pad_token_id=tokenizer.pad_token_id,
    )
    policy, reference = GPT2LMHeadModel(config), GPT2LMHeadModel(config)
    args = DPOConfig(
        output_dir=str(tmp_path / "dpo"),
        max_steps=1,
        per_device_train_batch_size=2,
        use_cpu=True,
        bf16=False,
        report_to="none",
        save_strategy="no",
        max_length=64,
    )
    trainer = DPOTrainer(
        model=policy,
        ref_model=reference,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
    )
    result = trainer.train()
    assert result.global_step == 1 and torch.isfinite(torch.tensor(result.training_loss))
