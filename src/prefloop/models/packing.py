"""Padding-free batches of preference pairs, each pair's shared prompt computed once.

A pair's chosen and rejected rows start with the same prompt. In a causal model that prompt's
hidden states are the same in both rows, so a packed pair holds it once:

    line:      [ prompt | chosen response | rejected response | next pair ... | pad ]
    positions:   0..s-1   s..c-1            s..r-1              0..
    attends to:  prompt   prompt + chosen   prompt + rejected   its own pair

Pairs are laid end to end in lines of `width` tokens (as many lines as first fit by decreasing
size needs, balanced to end at about the same column; a longer pair gets a line of its own), so
no arithmetic goes to padding or to a second copy of the prompt.
The block mask is explicit (N, 1, W, W), True where a token may attend, for transformers' SDPA
attention. Scores and gradients equal those of the padded rows (tests/models/test_reward_packing.py).

Shapes: B pairs, 2B rows (chosen rows first, then rejected), N lines of W tokens, L the longest row.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch

from prefloop.models.lm import BF16_WIDTH_MULTIPLE, round_up, width_multiple

SHARED, CHOSEN, REJECTED = 0, 1, 2  # which part of a pair a token belongs to


# CPU training attends pair by pair (AttentionGroups below, models/attention.py), so a line's
# length costs no attention: lines this long (RewardConfig's default pack_width) hold a whole
# benchmark batch in one, without the padding at the end of each shorter line (675 -> ~620
# tokens per 16-pair step on average).
GROUPED_LINE_WIDTH = 1024
# That one line's width is the batch's token count, a new value almost every step; each new
# matmul shape makes oneDNN build (and keep) its bf16 kernels. Rounded up to 64 the widths take
# a handful of values: peak RSS 1,190 -> 1,055 MB in the 21M benchmark (a multiple of 8 needed
# ~30 shapes in 33 steps) for ~5% padding tokens, ~1% once the reward batches are arranged to
# fill the rounding (train/reward.py, fill_lines).
GROUPED_LINE_MULTIPLE = 64


def line_multiple(pack_width: int, bf16: bool) -> int:
    """What reward batches' token width is rounded up to: GROUPED_LINE_MULTIPLE for packed
    lines under bf16, else `width_multiple` (8 under bf16, 1 in float32: PyTorch's float32 CPU
    matmuls build nothing per shape)."""
    return GROUPED_LINE_MULTIPLE if pack_width and bf16 else width_multiple(bf16)


@dataclass
class PackedPairs:
    input_ids: torch.Tensor  # (N, W)
    position_ids: torch.Tensor  # (N, W): each row's own positions, the prompt's counted once
    attention_mask: torch.Tensor  # (N, 1, W, W) bool: True where a token may attend
    last: torch.Tensor  # (2B,) flat index (line * W + column) of each row's last token
    keys: torch.Tensor  # (2B, L) flat indices of each row's tokens, in order (padded with last)
    key_valid: torch.Tensor  # (2B, L) bool: which entries of `keys` are real
    groups: AttentionGroups | None = None  # each pair's span, for attention pair by pair


@dataclass(frozen=True)
class _Layout:
    index: torch.Tensor  # (B, G) flat positions (line * W + column); past a pair's end: its first
    hidden: torch.Tensor  # (1, B, G, G) bool: True where the lines' mask hides a key
    inverse: torch.Tensor  # (N * W,) where each position is in (B * G) `index` (no pair: 0)
    unpaired: torch.Tensor  # positions (of N * W) in no pair: the lines' padding
    padding: torch.Tensor  # entries (of B * G) past their pair's end


class AttentionGroups:
    """Each pair's tokens as a span of its line: no token attends outside its pair, so
    attention can run pair by pair, (B, G, G) scores instead of the lines' (N, W, W)
    (models/attention.py). G is the largest pair rounded up, like the lines' width but to at
    most BF16_WIDTH_MULTIPLE: the one bf16 line's multiple of 64 would pad every pair of the
    (B, G, G) scores by up to 63 tokens.

    Built from the pairs' own masks (`pair_masks`, which also make the lines' mask); the
    gather indices are made on first use, by the attention that reads them (CPU training with
    transformers' SDPA attention, models/attention.py)."""

    def __init__(
        self, lines: int, width: int, index: torch.Tensor, valid: torch.Tensor, sees: torch.Tensor
    ) -> None:
        self.lines, self.width = lines, width  # N, W
        self._index, self._valid, self._sees = index, valid, sees  # (B, G), (B, G), (B, G, G)
        self.group = index.shape[1]  # G
        self._bias: dict[tuple[int, torch.dtype], torch.Tensor] = {}

    @cached_property
    def layout(self) -> _Layout:
        """Where each pair's tokens are in the lines, and the pair's own mask."""
        n, w, g = self.lines, self.width, self.group
        index, valid = self._index, self._valid
        # a query past its pair's end sees only itself (finite, unused output)
        pair_mask = self._sees | torch.eye(g, dtype=torch.bool)
        # a position in no pair reads entry 0 (a real token's; nothing reads that position back)
        inverse = torch.zeros(n * w, dtype=torch.long)
        inverse[index[valid]] = torch.arange(index.numel()).view_as(index)[valid]
        paired = torch.zeros(n * w, dtype=torch.bool)
        paired[index[valid]] = True
        unpaired = (~paired).nonzero().view(-1)
        padding = (~valid).view(-1).nonzero().view(-1)
        return _Layout(index, ~pair_mask.unsqueeze(0), inverse, unpaired, padding)

    def bias(self, heads: int, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
        """The pairs' mask as an additive bias for `heads` heads, heads first: (H * B, G, G)
        (built once per batch, read by every layer's forward)."""
        if (heads, dtype) not in self._bias:
            b, g = self._index.shape
            bias = torch.zeros(1, b, g, g, dtype=dtype)
            bias.masked_fill_(self.layout.hidden, torch.finfo(dtype).min)
            self._bias[heads, dtype] = bias.expand(heads, b, g, g).reshape(heads * b, g, g)
        return self._bias[heads, dtype]

    def pays(self) -> bool:
        """Whether the pairs' scores are well under the lines' (gathering costs something)."""
        return 2 * self._index.shape[0] * self.group**2 < self.lines * self.width**2


def pair_masks(kind: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Each pair's own mask from its tokens' `kind` (B, G): SHARED / CHOSEN / REJECTED, in
    order, `valid` (B, G) up to the pair's end. -> sees (B, G, G): key j visible to query i
    (causal, within the prompt or the query's own response)."""
    group = kind.shape[1]
    branch = (kind[:, None, :] == SHARED) | (kind[:, :, None] == kind[:, None, :])
    causal = torch.ones(group, group, dtype=torch.bool).tril()
    return branch & causal & valid[:, None, :] & valid[:, :, None]


def _long(values: list[int] | list[list[int]]) -> torch.Tensor:
    """A long tensor from Python ints (through NumPy: torch.tensor on a list is ~10x slower)."""
    return torch.from_numpy(np.array(values, dtype=np.int64))


def shared_prefixes(rows: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Pairs of rows (2B, T), row i and row B + i a pair, with `lengths` (2B,): the tokens at
    the start of each pair's rows that are the same, leaving each row at least one own token
    (its last one, where the score is read). -> (B,)"""
    b = rows.shape[0] // 2
    shorter = torch.minimum(lengths[:b], lengths[b:])
    column = torch.arange(rows.shape[1])
    stop = (rows[:b] != rows[b:]) | (column >= (shorter - 1)[:, None])
    return stop.int().argmax(dim=1)  # argmax: the first stop


def packed_sizes(rows: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Each pair's tokens when packed: both rows, their shared prefix once. -> (B,)"""
    b = rows.shape[0] // 2
    return lengths[:b] + lengths[b:] - shared_prefixes(rows, lengths)


def pack_lines(size: list[int], width: int) -> list[list[int]]:
    """Items of `size` (each <= `width`) -> lines of at most `width`: as many lines as first fit
    by decreasing size needs, refilled balanced when that fits (each item, largest first, to the
    least loaded line). Balanced lines end at about the same column, so trimming the batch to
    its longest line leaves little padding; first fit alone fills the first lines and leaves the
    last nearly empty."""
    order = sorted(range(len(size)), key=lambda i: -size[i])
    first_fit: list[list[int]] = []
    room: list[int] = []
    for i in order:
        k = next((k for k, r in enumerate(room) if r >= size[i]), len(room))
        if k == len(room):
            first_fit.append([])
            room.append(width)
        first_fit[k].append(i)
        room[k] -= size[i]
    lines: list[list[int]] = [[] for _ in first_fit]
    load = [0] * len(lines)
    for i in order:
        k = load.index(min(load))
        lines[k].append(i)
        load[k] += size[i]
    return lines if max(load) <= width else first_fit


def pack_pairs(
    rows: torch.Tensor, lengths: torch.Tensor, width: int, pad_id: int, multiple: int = 1
) -> PackedPairs:
    """Pack pairs of rows (R=2B, T) with `lengths` (2B,): row i and row B + i are one pair.
    The lines' width is trimmed to the longest line, then rounded up to a `multiple`.

    Built with tensor ops over (B, G), G the largest pair: a Python loop over the pairs' tokens
    took ~1 ms of a 0.95M model's ~28 ms reward step (Zen 3)."""
    b, t = rows.shape[0] // 2, rows.shape[1]
    prefix = shared_prefixes(rows, lengths)  # (B,)
    n_chosen, n_rejected = lengths[:b], lengths[b:]
    size_t = n_chosen + n_rejected - prefix  # packed_sizes, the prefix computed once
    size = size_t.tolist()
    width = max(width, max(size))
    lines = pack_lines(size, width)
    width = max(sum(size[i] for i in line) for line in lines)  # trim columns no line uses
    width = round_up(width, multiple)
    n = len(lines)
    span_list = [0] * b  # flat position of each pair's first token: pairs end to end in lines
    for line, pairs in enumerate(lines):
        at = line * width
        for i in pairs:
            span_list[i] = at
            at += size[i]
    span_t = _long(span_list)
    # each pair's tokens in order: the shared prefix and the chosen tail (chosen row, column j),
    # then the rejected tail (rejected row, column j - chosen length + prefix)
    group = round_up(max(size), min(multiple, BF16_WIDTH_MULTIPLE))
    j = torch.arange(group)
    valid = j < size_t[:, None]  # (B, G)
    index = span_t[:, None] + torch.where(valid, j, 0)  # (B, G); past a pair's end: its first
    chosen_own = (n_chosen - prefix)[:, None]  # the chosen row's tokens after the prefix
    rejected = j >= n_chosen[:, None]
    column = torch.where(rejected, j - chosen_own, j)[valid]
    source = torch.where(rejected, torch.arange(b)[:, None] + b, torch.arange(b)[:, None])
    kind = torch.where(j < prefix[:, None], SHARED, torch.where(rejected, REJECTED, CHOSEN))
    dest = index[valid]
    ids = torch.full((n * width,), pad_id, dtype=torch.long)
    ids[dest] = rows.reshape(-1)[source[valid] * t + column].long()
    pos = torch.zeros(n * width, dtype=torch.long)
    pos[dest] = column
    # each row's tokens: the chosen row's are its pair's first n_chosen; the rejected row's the
    # shared prefix, then its tail after the chosen one (padded with its last)
    longest = int(lengths.max())
    k = torch.arange(longest)
    upto_c = torch.minimum(k, n_chosen[:, None] - 1)
    upto_r = torch.minimum(k, n_rejected[:, None] - 1)
    keys_c = span_t[:, None] + upto_c
    keys_r = span_t[:, None] + torch.where(upto_r < prefix[:, None], upto_r, upto_r + chosen_own)
    keys_t = torch.cat([keys_c, keys_r])  # (2B, L)
    key_valid = k < lengths[:, None]
    # the lines' mask, (N, W, W): the pairs' own masks in their spans (models/attention.py
    # attends pair by pair from these); padding attends only to itself (a row with no True
    # would give NaN)
    sees = pair_masks(kind, valid)
    at_line = index[:, :, None] * width + (index % width)[:, None, :]  # (B, G, G) into (N*W, W)
    mask = torch.zeros(n * width * width, dtype=torch.bool)
    mask[at_line[sees]] = True
    mask = mask.view(n, width, width) | torch.eye(width, dtype=torch.bool)
    return PackedPairs(
        ids.view(n, width),
        pos.view(n, width),
        mask.unsqueeze(1),
        keys_t[:, -1].contiguous(),  # each row's last token: its keys end with it
        keys_t,
        key_valid,
        AttentionGroups(n, width, index, valid, sees),
    )
