"""Reward training end to end: store -> simulated labels -> reward model -> `prefloop score`."""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from prefloop.cli import main
from prefloop.errors import PrefloopError
from prefloop.feedback.annotators import SimulatedAnnotator, label_pending
from prefloop.feedback.gold import sentiment_gold
from prefloop.feedback.pairs import PromptItem, store_pairs
from prefloop.feedback.store import PreferenceStore
from prefloop.models.reward import load_reward_model, score
from prefloop.train.reward import (
    PairRecord,
    RewardConfig,
    RewardTask,
    encode_records,
    split_by_prompt,
    train_reward,
)
from prefloop.workspace import Workspace

POSITIVE = ["great", "wonderful", "loved", "excellent", "good", "amazing"]
NEGATIVE = ["terrible", "awful", "hated", "boring", "bad", "broke"]
NEUTRAL = [
    "the",
    "movie",
    "was",
    "it",
    "this",
    "product",
    "works",
    "after",
    "a",
    "week",
    "and",
    "sound",
    "battery",
    "plot",
]


def _response(rng: random.Random) -> str:
    mood = rng.choice([POSITIVE, NEGATIVE, []])
    words = [rng.choice(NEUTRAL) for _ in range(rng.randint(3, 8))]
    for _ in range(rng.randint(1, 2) if mood else 0):
        words.insert(rng.randrange(len(words) + 1), rng.choice(mood))
    return " ".join(words)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tokenizer, make_model) -> Workspace:
    """A workspace with a tiny 'SFT' model and 800 comparisons labelled by a simulated annotator
    at 75% agreement with the sentiment gold."""
    ws = Workspace.init(tmp_path_factory.mktemp("ws"))
    ws.save_model(make_model("gpt2", n_layer=2, n_embd=64), tokenizer, "sft")
    rng = random.Random(0)
    prompts = [PromptItem(f"Review {i}:") for i in range(400)]
    responses = [[_response(rng) for _ in range(3)] for _ in prompts]
    with PreferenceStore(ws.db_url) as store:
        store_pairs(store, prompts, responses, model_version="sft-v1", sampling={})
        label_pending(store, SimulatedAnnotator(sentiment_gold, agreement=0.75, seed=0))
    return ws


@pytest.fixture(scope="module")
def trained(workspace):
    cfg = RewardConfig(epochs=3, batch_size=32, lr=2e-3, heldout_fraction=0.2, log_every=5)
    return train_reward(workspace, cfg, progress=False)


def test_training_beats_chance_against_labels_and_gold(trained) -> None:
    version, metrics = trained
    assert version.stage == "reward" and version.meta["parent"] == "sft-v1"
    assert metrics["train_pairs"] > 500 and metrics["heldout_pairs"] > 100
    # the noise-free gold is what the labels were drawn from: well above a coin flip
    assert metrics["accuracy_gold"] > 0.75, metrics
    assert metrics["accuracy"] > 0.6, metrics
    assert 0.3 < metrics["label_gold_agreement"] < 0.95
    table = metrics["calibration"]
    assert sum(row["count"] for row in table) == metrics["heldout_pairs"]  # ties were skipped
    assert all(0.5 <= row["predicted"] <= 1.0 for row in table if row["count"])
    assert version.meta["metrics"]["accuracy_gold"] == metrics["accuracy_gold"]


def test_saved_model_is_normalized_and_loads_with_plain_transformers(workspace, trained) -> None:
    version, _ = trained
    model, tok = load_reward_model("latest:reward", workspace)
    with PreferenceStore(workspace.db_url) as store:
        prefs = store.preferences()
    rows = {(p.prompt, t) for p in prefs for t in (p.chosen, p.rejected)}
    prompts, texts = [p for p, _ in rows], [t for _, t in rows]
    normed = score(model, tok, prompts, texts)
    assert abs(normed.mean().item()) < 1e-3 and abs(normed.std().item() - 1) < 1e-3
    plain = AutoModelForSequenceClassification.from_pretrained(version.path, num_labels=1)
    assert type(plain).__name__ == "GPT2ForSequenceClassification"
    assert plain.config.pad_token_id == tok.pad_token_id


def test_positive_text_scores_above_negative(workspace, trained) -> None:
    model, tok = load_reward_model("latest:reward", workspace)
    good = score(model, tok, ["Review 1:"] * 2, ["the movie was great", "loved it, wonderful"])
    bad = score(model, tok, ["Review 1:"] * 2, ["the movie was terrible", "hated it, awful"])
    assert good.min() > bad.max()


def test_score_cli_file_stdin_and_errors(workspace, trained, tmp_path, monkeypatch, capsys) -> None:
    rows = [
        {"prompt": "Review 1:", "response": "the movie was great"},
        {"prompt": "Review 2:", "completion": "the movie was terrible"},
    ]
    src = tmp_path / "rows.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "scored.jsonl"
    ws = str(workspace.root)
    assert main(["score", "--workspace", ws, "--input", str(src), "--output", str(out)]) == 0
    scored = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["prompt"] for r in scored] == ["Review 1:", "Review 2:"]
    assert scored[0]["score"] > scored[1]["score"]

    capsys.readouterr()
    monkeypatch.setattr("sys.stdin", io.StringIO(src.read_text()))
    assert main(["score", "--workspace", ws]) == 0
    printed = [float(x) for x in capsys.readouterr().out.split()]
    assert printed == pytest.approx([r["score"] for r in scored], abs=1e-5)

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(rows[0]) + "\n" + json.dumps({"prompt": "x"}) + "\n")
    assert main(["score", "--workspace", ws, "--input", str(bad), "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert "row 2" in err and "response" in err and len(err.strip().splitlines()) == 1
    assert len(out.read_text().splitlines()) == 2  # the earlier output was not touched


def test_reward_cli_refuses_an_empty_store_and_a_causal_lm(workspace, tmp_path, capsys) -> None:
    empty = Workspace.init(tmp_path / "empty")
    assert main(["reward", "--workspace", str(empty.root), "--model", "x"]) == 2
    assert "no labelled comparisons" in capsys.readouterr().err
    src = tmp_path / "rows.jsonl"
    src.write_text(json.dumps({"prompt": "p", "response": "r"}) + "\n")
    ws = str(workspace.root)
    assert main(["score", "--workspace", ws, "--model", "sft-v1", "--input", str(src)]) == 2
    assert "no scalar head" in capsys.readouterr().err
    with pytest.raises(PrefloopError, match="no scalar head"):
        load_reward_model("sft-v1", workspace)


def test_task_batches_are_deterministic_with_ties_and_margins(tokenizer) -> None:
    records = [
        PairRecord("p", "great great", "bad bad"),
        PairRecord("q", "fine", "fine too", tie=True),
        PairRecord("r", "loved it", "hated it", strength=2),
    ]
    pairs = encode_records(records, tokenizer, 64, margin=0.5, pad_id=tokenizer.pad_token_id)
    assert pairs.tie.tolist() == [False, True, False]
    assert pairs.margin.tolist() == [0.0, 0.0, 1.0]  # strength 2 x 0.5; ties never get one
    task = RewardTask(pairs, batch_size=2, grad_accum=2, seed=3)
    first, again = task.microbatches(5), RewardTask(pairs, 2, 2, seed=3).microbatches(5)
    for a, b in zip(first, again, strict=True):
        assert all(torch.equal(a[k], b[k]) for k in a)
    # every pair appears once per epoch of 3 pairs: steps 0..2 cover 4 epochs of 3
    seen = torch.cat([mb["tie"] for s in range(3) for mb in task.microbatches(s)])
    assert seen.numel() == 12 and int(seen.sum()) == 4
    # right padding: each row's ids end where its mask ends, chosen rows first
    batch = first[0]
    assert batch["input_ids"].shape[0] == 4 and batch["attention_mask"][:, 0].all()


def test_split_by_prompt_keeps_prompts_on_one_side() -> None:
    records = [PairRecord(f"prompt {i % 50}", "a", "b") for i in range(500)]
    train_set, heldout = split_by_prompt(records, 0.2, seed=0)
    assert len(train_set) + len(heldout) == 500
    assert not {r.prompt for r in train_set} & {r.prompt for r in heldout}
    assert 0.05 < len(heldout) / 500 < 0.4
    assert split_by_prompt(records, 0.2, seed=0) == (train_set, heldout)


def test_bad_config_values_are_named() -> None:
    from prefloop.train.reward import _check_config

    with pytest.raises(PrefloopError, match="ties"):
        _check_config(RewardConfig(ties="sometimes"))
    with pytest.raises(PrefloopError, match="heldout_fraction"):
        _check_config(RewardConfig(heldout_fraction=1.5))


def test_reward_task_loss_matches_bradley_terry(tokenizer, tmp_path: Path, make_model) -> None:
    from prefloop.models.lm import save_pretrained
    from prefloop.models.reward import build_reward_model, reward_forward
    from prefloop.train.losses import bradley_terry, bradley_terry_tie

    sft = save_pretrained(make_model("llama"), tokenizer, tmp_path / "sft")
    model = build_reward_model(sft, tokenizer)
    records = [
        PairRecord("p", "great great", "bad bad"),
        PairRecord("q", "fine", "fine too", tie=True),
    ]
    pairs = encode_records(records, tokenizer, 64, margin=0.0, pad_id=tokenizer.pad_token_id)
    task = RewardTask(pairs, batch_size=2, grad_accum=1)
    batch = task.microbatches(0)[0]
    loss, metrics = task.loss(model, batch)
    r = reward_forward(model, batch["input_ids"], batch["attention_mask"])  # masked path
    r_c, r_r = r[:2], r[2:]
    expected = torch.where(batch["tie"], bradley_terry_tie(r_c, r_r), bradley_terry(r_c, r_r))
    assert loss.item() == pytest.approx(expected.mean().item(), abs=1e-5)
    assert metrics["loss/reward"] == pytest.approx(loss.item(), abs=1e-6)


def test_length_grouping_keeps_epochs_whole_and_cuts_padding() -> None:
    from prefloop.train.reward import EncodedPairs

    n, width = 256, 64
    gen = torch.Generator().manual_seed(0)
    lengths = torch.randint(4, width + 1, (2 * n,), generator=gen)
    rows = torch.zeros(2 * n, width, dtype=torch.long)
    pairs = EncodedPairs(rows, lengths, torch.zeros(n, dtype=torch.bool), torch.zeros(n))

    def padded_tokens(task: RewardTask) -> int:
        total = 0
        for step in range(n // 8):
            batch = task.microbatches(step)[0]
            total += batch["input_ids"].numel()
        return total

    grouped, plain = (
        RewardTask(pairs, 8, 1, seed=1),
        RewardTask(pairs, 8, 1, seed=1, group_by_length=False),
    )
    order = grouped._epoch_order(0)
    assert sorted(order.tolist()) == list(range(n))  # an epoch is a permutation
    assert torch.equal(order, RewardTask(pairs, 8, 1, seed=1)._epoch_order(0))  # seeded
    assert padded_tokens(grouped) < 0.85 * padded_tokens(plain)
