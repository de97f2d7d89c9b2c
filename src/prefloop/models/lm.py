"""Load, build and save causal language models, always in Hugging Face format.

Anything AutoModelForCausalLM loads works (local folder or hub id). Weights are read from
safetensors only, and `trust_remote_code` stays off unless the user turns it on.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    GPT2Config,
    LlamaConfig,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Qwen2Config,
)

from prefloop.errors import PrefloopError
from prefloop.models.tokenizer import PAD

FAMILIES = ("gpt2", "llama", "qwen2")

# Named sizes for models built from scratch (n_layer, n_embd, n_head).
SIZES: dict[str, tuple[int, int, int]] = {
    "tiny": (2, 128, 4),  # ~1M parameters with a 4k vocabulary
    "small": (4, 256, 4),  # ~4M
    "medium": (6, 512, 8),  # ~20M
}


def model_config(
    family: str,
    vocab_size: int,
    *,
    n_layer: int = 2,
    n_embd: int = 128,
    n_head: int = 4,
    context: int = 128,
    pad_token_id: int | None = None,
    eos_token_id: int | None = None,
) -> PretrainedConfig:
    """A config for a model of `family` built from scratch, dropout off (RLHF needs it off)."""
    common: dict[str, Any] = dict(
        vocab_size=vocab_size,
        pad_token_id=pad_token_id,
        eos_token_id=eos_token_id,
        bos_token_id=eos_token_id,
        tie_word_embeddings=True,
    )
    if family == "gpt2":
        return GPT2Config(
            n_layer=n_layer,
            n_embd=n_embd,
            n_head=n_head,
            n_positions=context,
            # the same tanh GELU as GPT-2's "gelu_new", as one fused kernel instead of five ops
            activation_function="gelu_pytorch_tanh",
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            **common,
        )
    kv: dict[str, Any] = dict(
        num_hidden_layers=n_layer,
        hidden_size=n_embd,
        num_attention_heads=n_head,
        num_key_value_heads=n_head,
        intermediate_size=4 * n_embd,
        max_position_embeddings=context,
        attention_dropout=0.0,
        **common,
    )
    if family == "llama":
        return LlamaConfig(**kv)
    if family == "qwen2":
        return Qwen2Config(**kv)
    raise PrefloopError(f"unknown model family '{family}' (choose from {', '.join(FAMILIES)})")


def build_model(
    family: str, tokenizer: PreTrainedTokenizerBase, *, seed: int = 0, **size: Any
) -> PreTrainedModel:
    """A freshly initialized causal LM of `family` sized for `tokenizer`'s vocabulary."""
    cfg = model_config(
        family,
        len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **size,
    )
    torch.manual_seed(seed)  # seed before init so a build is reproducible
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa")
    return model.float().eval()


def _check_exists(ref: str) -> None:
    looks_local = ref.startswith((".", "/", "~")) or os.sep in ref.rstrip("/").split("/", 1)[-1]
    if looks_local and not Path(ref).expanduser().exists():
        raise PrefloopError(f"model path '{ref}' does not exist")


def fuse_activation(config: Any) -> Any:
    """Run "gelu_new" (the tanh GELU of GPT-2 and kin, written as five elementwise ops) as
    "gelu_pytorch_tanh", the same function in one fused kernel: equal within float rounding,
    and a tiny model's MLP spends a fifth of its time there. Returns the config."""
    for key in ("activation_function", "hidden_act"):
        if getattr(config, key, None) == "gelu_new":
            setattr(config, key, "gelu_pytorch_tanh")
    return config


def pad_rows(
    rows: Sequence[Sequence[float]],
    pad: float,
    side: str = "right",
    width: int | None = None,
    dtype: torch.dtype = torch.long,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of ids (or per-token floats, with `dtype`) padded on `side` to `width` (default: the
    longest row) -> (values, attention mask), both (B, width); the mask is long, 1 on real tokens."""
    if side not in ("left", "right"):
        raise ValueError(f"padding side must be 'left' or 'right', got {side!r}")
    width = width if width is not None else max((len(r) for r in rows), default=0)
    values = torch.full((len(rows), width), pad, dtype=dtype)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        if len(row):
            span = slice(width - len(row), width) if side == "left" else slice(0, len(row))
            values[i, span] = torch.tensor(row, dtype=dtype)
            mask[i, span] = 1
    return values, mask


# oneDNN, behind PyTorch's CPU bf16 matmuls, JIT-compiles a kernel for every new shape (~10 ms
# each, then cached): when every batch has a width of its own, a bf16 step pays that again and
# again and the cache grows (a 21M reward model's peak RSS 1,214 -> ~1,030 MB on a Xeon with AMX,
# widths rounded to 8). float32 matmuls (MKL) have no such cost, so they keep exact widths.
# Used by reward batches, whose packed widths take dozens of values; not by PPO rollouts, whose
# width (prompt + longest response) takes few, so the cache warms and rounding would only add
# padding (~7% of a 32 x (4 + 48) learner batch).
BF16_WIDTH_MULTIPLE = 8


def width_multiple(bf16: bool) -> int:
    """What reward batches' token widths are rounded up to: BF16_WIDTH_MULTIPLE under bf16."""
    return BF16_WIDTH_MULTIPLE if bf16 else 1


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


# Families whose attention takes a ready (B, 1, Q, K) boolean mask (True = may attend) as is,
# with SDPA attention: transformers 5 passes such a mask straight to the kernel. Tested on these
# three (sampler log-probs, packed reward pairs); other models get 2-D masks.
MASK_4D_MODEL_TYPES = frozenset({"gpt2", "llama", "qwen2"})


def takes_4d_mask(model: torch.nn.Module) -> bool:
    config = getattr(model, "config", None)
    return (
        getattr(config, "model_type", None) in MASK_4D_MODEL_TYPES
        and getattr(config, "_attn_implementation", None) == "sdpa"
    )


def load_model(ref: str, *, trust_remote_code: bool = False) -> PreTrainedModel:
    """Load a causal LM from a folder or hub id (safetensors only), float32, eval mode."""
    _check_exists(ref)
    try:
        config = fuse_activation(
            AutoConfig.from_pretrained(ref, trust_remote_code=trust_remote_code)
        )
    except (OSError, ValueError) as e:
        raise PrefloopError(f"cannot load model '{ref}': {str(e).splitlines()[0]}") from None
    try:
        model = AutoModelForCausalLM.from_pretrained(
            ref,
            config=config,
            use_safetensors=True,
            trust_remote_code=trust_remote_code,
            dtype=torch.float32,
            attn_implementation="sdpa",
        )
    except ValueError as e:
        raise PrefloopError(
            f"'{ref}' is not a causal language model: {str(e).splitlines()[0]}"
        ) from None
    except OSError as e:
        raise PrefloopError(f"cannot load model '{ref}': {str(e).splitlines()[0]}") from None
    return model.eval()


def load_tokenizer(ref: str, *, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """Load a tokenizer; a pad token distinct from EOS is added if missing (see ensure_pad_token)."""
    _check_exists(ref)
    try:
        tok = AutoTokenizer.from_pretrained(ref, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise PrefloopError(f"cannot load tokenizer '{ref}': {str(e).splitlines()[0]}") from None
    if tok.eos_token_id is None:
        raise PrefloopError(f"tokenizer '{ref}' has no EOS token")
    if tok.pad_token_id is None or tok.pad_token_id == tok.eos_token_id:
        tok.add_special_tokens({"pad_token": PAD})
    return tok


def load_model_and_tokenizer(
    ref: str, *, trust_remote_code: bool = False
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    tok = load_tokenizer(ref, trust_remote_code=trust_remote_code)
    model = load_model(ref, trust_remote_code=trust_remote_code)
    embeddings: torch.nn.Module = model.get_input_embeddings()
    if len(tok) > embeddings.weight.shape[0]:  # type: ignore[index]
        model.resize_token_embeddings(len(tok))  # the pad token we added
    model.config.pad_token_id = tok.pad_token_id
    return model, tok


def context_length(model: PreTrainedModel) -> int:
    cfg = model.config
    for name in ("n_positions", "max_position_embeddings", "n_ctx"):
        if getattr(cfg, name, None):
            return int(getattr(cfg, name))
    return 2048


def save_pretrained(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, path: str | Path
) -> Path:
    """Save in HF format (config.json, model.safetensors, tokenizer files)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
