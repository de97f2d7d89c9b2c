"""Sampling on a TRAINED model: prefloop Sampler vs transformers generate, same model/settings.

    .venv/bin/python bench/sampling_trained.py WORKSPACE/models/sft-v1

bench/sampling.py uses randomly initialized weights (a flat distribution: the worst case for
top-p, where both sides must sort the whole vocabulary); this one uses a trained policy, as
pairs, PPO rollouts and serving do. Sides alternated in one process, 2 warmups, 10 rounds.
"""

import json
import statistics
import sys
import time

import torch
import transformers

from prefloop.data.reviews import rl_prompts
from prefloop.models.lm import load_model_and_tokenizer
from prefloop.models.sampler import Sampler, SamplingParams, left_pad

transformers.utils.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()

m, tok = load_model_and_tokenizer(sys.argv[1])
ps = rl_prompts(32, 0, "eval")
s = Sampler(m, tok)
sp = SamplingParams(max_new_tokens=32, top_p=0.9, seed=0, batch_size=32)
ids, mask = left_pad([tok(p)["input_ids"] for p in ps], tok.pad_token_id)


def ours():
    t = time.perf_counter()
    g = s.generate(ps, sp)
    return time.perf_counter() - t, sum(len(x) for x in g.response_ids)


def hf():
    t = time.perf_counter()
    with torch.no_grad():
        out = m.generate(
            input_ids=ids,
            attention_mask=mask,
            do_sample=True,
            top_p=0.9,
            top_k=0,
            max_new_tokens=32,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
        )
    gen = out[:, ids.shape[1] :]
    n = sum(int((r != tok.pad_token_id).sum()) for r in gen)
    return time.perf_counter() - t, n


for _ in range(2):
    ours()
    hf()
a = []
b = []
for _ in range(10):
    a.append(ours())
    b.append(hf())
ra = statistics.median(n / t for t, n in a)
rb = statistics.median(n / t for t, n in b)
print(
    json.dumps(
        {
            "model": sys.argv[1],
            "threads": torch.get_num_threads(),
            "batch": 32,
            "max_new_tokens": 32,
            "top_p": 0.9,
            "prefloop_tok_s": ra,
            "transformers_tok_s": rb,
            "ratio": ra / rb,
        }
    )
)
