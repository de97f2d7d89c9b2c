"""`prefloop reward`: a reward model trained on labelled comparisons with the Bradley-Terry loss.

    labelled comparisons (PreferenceStore) -> split by prompt (train / held-out)
      -> RewardTask batches of (chosen, rejected) rows -> THE training loop
      -> normalize (compared responses score mean 0, std 1) -> held-out accuracy (noisy labels and
         noise-free gold), loss, calibration -> a `reward-vN` version in the registry

Shapes: B = pairs in a micro-batch, T = padded length; a batch holds 2B rows, the B chosen rows
first, then their B rejected rows, so one forward pass scores both sides.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prefloop.configs import RewardConfig
from prefloop.errors import PrefloopError
from prefloop.models.lm import pad_rows, round_up, takes_4d_mask
from prefloop.models.packing import (
    GROUPED_LINE_WIDTH,
    line_multiple,
    pack_pairs,
    packed_sizes,
)
from prefloop.models.reward import (
    ENSEMBLE_DIR,
    build_reward_model,
    encode_pairs,
    max_positions,
    packed_reward_forward,
    reward_forward,
    set_normalization,
)
from prefloop.train.loop import train
from prefloop.train.losses import bradley_terry, bradley_terry_tie
from prefloop.train.reward_metrics import heldout_metrics
from prefloop.workspace import ModelVersion, Workspace

TIE_CHOICES = ("tie", "both_bad")


@dataclass(frozen=True)
class PairRecord:
    """One labelled comparison as the reward model sees it."""

    prompt: str
    chosen: str
    rejected: str
    tie: bool = False
    strength: int | None = None
    comparison_id: int | None = None
    annotator_kind: str = ""
    messages: tuple[dict[str, str], ...] | None = None  # a multi-turn prompt (prompt = its text)

    @property
    def context(self) -> str | list[dict[str, str]]:
        """What the model reads before the response: the conversation, else the prompt text."""
        return list(self.messages) if self.messages else self.prompt


def _check_config(cfg: RewardConfig) -> None:
    if cfg.ties not in ("skip", "equal"):
        raise PrefloopError("ties must be 'skip' or 'equal'", field="ties")
    if cfg.gold not in ("auto", "sentiment", "none"):
        raise PrefloopError("gold must be auto, sentiment or none", field="gold")
    if not 0.0 <= cfg.heldout_fraction < 1.0:
        raise PrefloopError("heldout_fraction must be in [0, 1)", field="heldout_fraction")
    for name in ("batch_size", "ensemble"):
        if getattr(cfg, name) < 1:
            raise PrefloopError(f"{name} must be >= 1", field=name)
    if cfg.pack_width < 0:
        raise PrefloopError("pack_width must be >= 0", field="pack_width")
    if cfg.epochs <= 0 and cfg.max_steps <= 0:
        raise PrefloopError("set epochs > 0 or max_steps > 0", field="epochs")


# ---- data -------------------------------------------------------------------------------
def records_from_store(store: Any, cfg: RewardConfig) -> list[PairRecord]:
    """Labelled comparisons from the store, one record per label (ties only when trained on)."""
    prefs = store.preferences(
        kinds=cfg.kinds or None, sources=cfg.sources or None, include_ties=cfg.ties == "equal"
    )
    return [
        PairRecord(
            p.prompt,
            p.chosen,
            p.rejected,
            p.choice in TIE_CHOICES,
            p.strength,
            p.comparison_id,
            p.annotator_kind,
            tuple(p.messages) if p.messages else None,
        )
        for p in prefs
    ]


def split_by_prompt(
    records: Sequence[PairRecord], fraction: float, seed: int
) -> tuple[list[PairRecord], list[PairRecord]]:
    """(train, held-out): whole prompts go to one side, so held-out prompts are never seen.

    A prompt's side is a hash of (seed, prompt): stable when more comparisons arrive."""

    def held_out(prompt: str) -> bool:
        digest = hashlib.sha256(f"{seed}\x00{prompt}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64 < fraction

    train_set = [r for r in records if not held_out(r.prompt)]
    heldout = [r for r in records if held_out(r.prompt)]
    return train_set, heldout


@dataclass
class EncodedPairs:
    """Training pairs as tensors, built once: row i is pair i's chosen response, row N + i its
    rejected one, right-padded to the longest row."""

    rows: torch.Tensor  # (2N, L) token ids
    lengths: torch.Tensor  # (2N,)
    tie: torch.Tensor  # (N,) bool
    margin: torch.Tensor  # (N,) float

    def __len__(self) -> int:
        return int(self.tie.shape[0])


def encode_records(
    records: Sequence[PairRecord],
    tokenizer: Any,
    max_length: int,
    margin: float = 0.0,
    pad_id: int | None = None,
) -> EncodedPairs:
    """Tokenize every pair once; `margin` x label strength is each pair's Bradley-Terry margin."""
    pad_id = int(tokenizer.pad_token_id) if pad_id is None else pad_id
    contexts = [r.context for r in records]
    ids = encode_pairs(
        tokenizer, contexts + contexts, [r.chosen for r in records] + [r.rejected for r in records],
        max_length,
    )  # fmt: skip
    rows, mask = pad_rows(ids, pad_id) if ids else (torch.zeros(0, 1), torch.zeros(0, 1))
    strength = torch.tensor([float(r.strength or 0) for r in records])
    tie = torch.tensor([r.tie for r in records], dtype=torch.bool)
    return EncodedPairs(rows.long(), mask.sum(1), tie, torch.where(tie, 0.0, margin * strength))


def collate_pairs(
    pairs: EncodedPairs,
    index: torch.Tensor,
    pack_width: int = 0,
    pad_id: int = 0,
    multiple: int = 1,
) -> dict[str, Any]:
    """The pairs at `index` as 2B rows (chosen first, then rejected): right-padded to the
    longest, or with `pack_width` > 0 packed pair by pair, each prompt once, into lines of that
    many tokens (`packed`, models/packing.py); either width rounded up to a `multiple`."""
    rows = torch.cat([index, index + len(pairs)])  # (2B,)
    lengths = pairs.lengths[rows]
    width = int(lengths.max())
    batch: dict[str, Any] = {"tie": pairs.tie[index], "margin": pairs.margin[index]}  # (B,)
    if pack_width:
        packed = pack_pairs(pairs.rows[rows, :width], lengths, pack_width, pad_id, multiple)
        batch["packed"] = packed
    else:
        ids = pairs.rows[rows, :width]
        width = round_up(width, multiple)
        batch["input_ids"] = nn.functional.pad(ids, (0, width - ids.shape[1]), value=pad_id)
        batch["attention_mask"] = (torch.arange(width) < lengths[:, None]).long()  # (2B, T)
    return batch


# ---- the task -----------------------------------------------------------------------------
def fill_lines(batches: list[torch.Tensor], size: torch.Tensor, multiple: int, width: int) -> None:
    """Swap pairs between neighbouring batches (in place) so that each batch's packed tokens
    come up to a multiple of `multiple` (the one line's width is rounded up to it; what the
    rounding adds is padding that every layer computes): batch k takes from batch k + 1 the
    pair that grows it by as much as its rounding leaves free, giving back one of its own.
    Neighbours in length order hold pairs of similar length, so the batches stay grouped by
    length; every pair stays in the epoch once. The reward benchmark's 33 batches: 645.8 token
    slots a step (4.5% padding), 622.5 after (1.0%)."""
    for a, b in itertools.pairwise(batches):
        for _ in range(len(a)):  # a few swaps at most; each grows `a` and shrinks what is free
            total = int(size[a].sum())
            free = min(-total % multiple, width - total)
            grow = size[b][None, :] - size[a][:, None]  # (A, B): swapping a[i] for b[j]
            grow = torch.where((grow > 0) & (grow <= free), grow, -1)
            if int(grow.max()) <= 0:
                break
            i, j = divmod(int(grow.argmax()), len(b))
            a[i], b[j] = b[j].clone(), a[i].clone()


@dataclass
class RewardTask:
    """Shuffled epochs over training pairs; the Bradley-Terry loss on each micro-batch.

    Batch `step` is a deterministic function of (seed, step), so a resumed run sees the same data.
    With `pack_width` > 0 the rows of a micro-batch are packed without padding (the model must
    be one `takes_4d_mask` accepts); the loss is the same up to float rounding.
    """

    pairs: EncodedPairs
    batch_size: int
    grad_accum: int
    seed: int = 0
    center_coef: float = 0.0
    group_by_length: bool = True
    pack_width: int = 0
    pad_id: int = 0
    width_multiple: int = 1  # batches' token width rounded up to this (`width_multiple()`)

    GROUP = 32  # batches per length-sorting window

    def __post_init__(self) -> None:
        if not len(self.pairs):
            raise PrefloopError("no training pairs (all comparisons were held out or skipped)")
        n = len(self.pairs)
        self._pair_length = torch.maximum(self.pairs.lengths[:n], self.pairs.lengths[n:])
        self._order: tuple[int, torch.Tensor] | None = None
        # a batch that is one packed line (bf16) is as wide as its tokens, rounded up to
        # `width_multiple`: fill_lines then picks batches whose tokens fill that rounding
        one_line = self.pack_width >= GROUPED_LINE_WIDTH and self.width_multiple > 1
        self._packed_size = packed_sizes(self.pairs.rows, self.pairs.lengths) if one_line else None

    def _epoch_order(self, epoch: int) -> torch.Tensor:
        """A shuffled order of the pairs. With `group_by_length`, each window of GROUP batches
        is sorted by length and the resulting batches are shuffled: batches hold pairs of
        similar length, so less compute goes to padding (TRL's group_by_length, here seeded)."""
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        order = torch.randperm(len(self.pairs), generator=g)
        if not self.group_by_length:
            return order
        window = self.batch_size * self.GROUP
        chunks = [c[self._pair_length[c].argsort(stable=True)] for c in order.split(window)]
        batches = [b.clone() for b in torch.cat(chunks).split(self.batch_size)]
        if self._packed_size is not None:
            fill_lines(batches, self._packed_size, self.width_multiple, self.pack_width)
        return torch.cat([batches[i] for i in torch.randperm(len(batches), generator=g)])

    def _indices(self, start: int, n: int) -> torch.Tensor:
        """Positions start .. start+n-1 of the endless stream of shuffled epochs."""
        out = []
        k, end = start, start + n
        while k < end:  # one slice per epoch the positions touch
            epoch, pos = divmod(k, len(self.pairs))
            if self._order is None or self._order[0] != epoch:
                self._order = (epoch, self._epoch_order(epoch))
            take = min(len(self.pairs) - pos, end - k)
            out.append(self._order[1][pos : pos + take])
            k += take
        return torch.cat(out)

    def microbatches(self, step: int) -> list[dict[str, Any]]:
        start = step * self.batch_size * self.grad_accum
        return [
            collate_pairs(
                self.pairs,
                self._indices(start + m * self.batch_size, self.batch_size),
                self.pack_width,
                self.pad_id,
                self.width_multiple,
            )
            for m in range(self.grad_accum)
        ]

    def loss(
        self, model: nn.Module, batch: dict[str, Any]
    ) -> tuple[torch.Tensor, dict[str, float]]:
        if "packed" in batch:
            r = packed_reward_forward(model, batch["packed"])  # type: ignore[arg-type]  # (2B,)
        else:
            ids, mask = batch["input_ids"], batch["attention_mask"]
            r = reward_forward(model, ids, mask, right_padded=True)  # type: ignore[arg-type]
        b = batch["tie"].shape[0]
        r_chosen, r_rejected = r[:b], r[b:]  # (B,), (B,)
        tie = batch["tie"]
        per_pair = torch.where(
            tie,
            bradley_terry_tie(r_chosen, r_rejected),
            bradley_terry(r_chosen, r_rejected, batch["margin"]),
        )
        loss = per_pair.mean()
        if self.center_coef:
            loss = loss + self.center_coef * (r**2).mean()
        with torch.no_grad():
            decided = ~tie
            acc = (r_chosen > r_rejected)[decided].float().mean() if decided.any() else None
        metrics = {
            "loss/reward": float(per_pair.detach().mean()),
            "charts/reward_gap": float((r_chosen - r_rejected).detach().mean()),
            "charts/reward_mean": float(r.detach().mean()),
        }
        if acc is not None:
            metrics["charts/train_accuracy"] = float(acc)
        return loss, metrics


# ---- training ---------------------------------------------------------------------------
@dataclass
class RewardRun:
    models: list[Any]
    tokenizer: Any
    metrics: dict[str, Any]


def _steps(cfg: RewardConfig, n_train: int) -> int:
    if cfg.max_steps > 0:
        return cfg.max_steps
    per_step = cfg.batch_size * cfg.grad_accum
    return max(1, round(cfg.epochs * n_train / per_step))


def _use_gold(cfg: RewardConfig, kinds: Sequence[str]) -> bool:
    """Gold accuracy for simulated labels: their annotator judges by the sentiment gold."""
    if cfg.gold == "auto":
        return bool(kinds) and all(k == "simulated" for k in kinds)
    return cfg.gold == "sentiment"


def train_reward_model(
    sft_path: str,
    records: Sequence[PairRecord],
    cfg: RewardConfig,
    run_dir: Path,
    *,
    use_gold: bool = False,
    progress: bool = True,
) -> RewardRun:
    """Train `cfg.ensemble` reward models from the causal LM at `sft_path` on `records`."""
    from prefloop.models.lm import load_tokenizer

    _check_config(cfg)
    train_records, heldout = split_by_prompt(records, cfg.heldout_fraction, cfg.seed)
    tokenizer = load_tokenizer(sft_path)
    pad_id = int(tokenizer.pad_token_id)
    models: list[Any] = []
    seconds, pairs = 0.0, None
    for i in range(cfg.ensemble):
        model = build_reward_model(sft_path, tokenizer, seed=cfg.seed + i)
        if pairs is None:
            max_length = cfg.max_length or max_positions(model)
            pairs = encode_records(train_records, tokenizer, max_length, cfg.margin, pad_id)
        pack = cfg.pack_width if takes_4d_mask(model) else 0
        task = RewardTask(
            pairs, cfg.batch_size, cfg.grad_accum, cfg.seed + i, cfg.center_coef,
            cfg.group_by_length, pack, pad_id, line_multiple(pack, cfg.bf16),
        )  # fmt: skip
        loop_cfg = dataclasses.replace(cfg, seed=cfg.seed + i, max_steps=_steps(cfg, len(pairs)))
        member_dir = run_dir / f"member-{i:02d}" if cfg.ensemble > 1 else run_dir
        member_dir.mkdir(parents=True, exist_ok=True)
        desc = f"reward {i + 1}/{cfg.ensemble}" if cfg.ensemble > 1 else "reward"
        result = train(model, task, loop_cfg, member_dir, desc=desc, progress=progress)
        seconds += result.seconds
        # Normalize on the compared responses: `prefloop pairs` sampled them from the SFT model.
        _normalize(model, tokenizer, records)
        models.append(model)
    metrics = heldout_metrics(models, tokenizer, heldout, use_gold, cfg.gold_tie_eps)
    metrics.update(
        train_pairs=len(train_records),
        heldout_pairs=len(heldout),
        steps=_steps(cfg, len(train_records)),
        train_seconds=round(seconds, 2),
        train_loss=result.final.get("loss/reward"),
    )
    return RewardRun(models, tokenizer, metrics)


def _normalize(model: Any, tokenizer: Any, records: Sequence[PairRecord]) -> None:
    """Gain and bias so the distinct compared responses score mean 0, std 1."""
    from prefloop.models.reward import score

    seen: dict[tuple[str, str], PairRecord] = {}
    for r in records:
        for text in (r.chosen, r.rejected):
            seen.setdefault((r.prompt, text), r)
    contexts = [r.context for r in seen.values()]
    raw = score(model, tokenizer, contexts, [t for _, t in seen], 64, raw=True)
    set_normalization(model, raw)


def train_reward(
    ws: Workspace, cfg: RewardConfig, store: Any = None, *, progress: bool = True
) -> tuple[ModelVersion, dict[str, Any]]:
    """`prefloop reward`: labelled comparisons in the store -> a new `reward-vN` version."""
    from prefloop.feedback.store import PreferenceStore

    _check_config(cfg)
    own_store = store is None
    store = store or PreferenceStore(cfg.db or ws.db_url)
    try:
        records = records_from_store(store, cfg)
    finally:
        if own_store:
            store.close()
    if not records:
        raise PrefloopError(
            "no labelled comparisons to learn from (run `prefloop pairs` and `prefloop label`)"
        )
    sft_path = ws.resolve(cfg.model)
    t0 = time.perf_counter()
    use_gold = _use_gold(cfg, [r.annotator_kind for r in records])
    run_dir = ws.new_run_dir("reward")
    run = train_reward_model(sft_path, records, cfg, run_dir, use_gold=use_gold, progress=progress)
    run.metrics["seconds"] = round(time.perf_counter() - t0, 2)
    version = save_reward_version(ws, run, cfg, parent=ws.version_of(sft_path) or cfg.model)
    return version, run.metrics


def save_reward_version(
    ws: Workspace, run: RewardRun, cfg: RewardConfig, parent: str | None
) -> ModelVersion:
    """Member 0 at the version root (loadable by plain transformers), others in ensemble/."""
    ws.models_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=ws.models_dir, prefix=".save-") as tmp:
        root = Path(tmp)
        for i, model in enumerate(run.models):
            target = root if i == 0 else root / ENSEMBLE_DIR / f"member-{i:02d}"
            model.save_pretrained(target, safe_serialization=True)
            run.tokenizer.save_pretrained(target)
        (root / "train_config.json").write_text(json.dumps(asdict(cfg), indent=2, default=str))
        data = {"store": cfg.db or "workspace", "kinds": cfg.kinds, "sources": cfg.sources}
        scalars = {k: v for k, v in run.metrics.items() if not isinstance(v, list | dict)}
        version = ws.register(root, "reward", parent=parent, data=data, metrics=scalars)
    (ws.reports_dir / f"{version.name}-calibration.json").write_text(
        json.dumps(run.metrics.get("calibration", []), indent=2)
    )
    return version
