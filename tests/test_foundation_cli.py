"""The foundation stages end to end through the `prefloop` command: errors, resume, reload."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

PREFLOOP = [sys.executable, "-m", "prefloop.cli"]
SMALL = [
    "--embedded-docs",
    "400",
    "--size",
    "tiny",
    "--context",
    "32",
    "--batch-size",
    "8",
    "--vocab-size",
    "512",
    "--log-every",
    "1",
]


def run(*args: str, check: bool = False) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run([*PREFLOOP, *args], capture_output=True, text=True, env=env, timeout=600)
    if check and p.returncode != 0:
        raise AssertionError(p.stderr[-2000:])
    return p


def one_line_error(p: subprocess.CompletedProcess) -> str:
    assert p.returncode == 2, (p.returncode, p.stderr[-2000:])
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, p.stderr
    assert "Traceback" not in p.stderr
    return lines[0]


def test_bad_flag_is_one_line_exit_2(tmp_path):
    line = one_line_error(run("pretrain", "--workspace", str(tmp_path), "--max-stpes", "3"))
    assert "--max-stpes" in line


def test_missing_model_path(tmp_path):
    line = one_line_error(
        run("sft", "--workspace", str(tmp_path), "--model", str(tmp_path / "nope"))
    )
    assert "does not exist" in line and "nope" in line


@pytest.mark.parametrize("config", [{"model_type": "t5"}, {"model_type": "no-such-architecture"}])
def test_folder_that_is_not_a_causal_lm(tmp_path, config):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    line = one_line_error(
        run("generate", "--workspace", str(tmp_path / "ws"), "--model", str(tmp_path / "m"), "hi")
    )
    assert str(tmp_path / "m") in line


def test_bad_corpus_row_names_file_row_field_and_writes_no_model(tmp_path):
    data = tmp_path / "corpus.jsonl"
    data.write_text('{"text": "a fine first row"}\n{"txt": "typo in the field"}\n')
    line = one_line_error(run("pretrain", "--workspace", str(tmp_path / "ws"), "--data", str(data)))
    assert str(data) in line and "row 2" in line and "'text'" in line
    assert not list((tmp_path / "ws" / "models").glob("pretrain-*"))


def _weights(ws: Path, version: str) -> dict[str, torch.Tensor]:
    return load_file(str(ws / "models" / version / "model.safetensors"))


@pytest.mark.slow
def test_sigkill_then_resume_equals_uninterrupted(tmp_path):
    args = [
        *SMALL,
        "--max-steps",
        "30",
        "--checkpoint-every",
        "5",
        "--deterministic",
        "--warmup-steps",
        "3",
    ]
    ws_full, ws_kill = tmp_path / "full", tmp_path / "killed"
    run("pretrain", "--workspace", str(ws_full), *args, check=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [*PREFLOOP, "pretrain", "--workspace", str(ws_kill), *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    deadline = time.time() + 300
    while time.time() < deadline and not list(
        ws_kill.glob("runs/pretrain-*/checkpoints/step-00000010")
    ):
        assert proc.poll() is None, "finished before it could be killed"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not list((ws_kill / "models").glob("pretrain-*")), "killed run must not register a model"
    run("pretrain", "--workspace", str(ws_kill), *args, "--resume", check=True)
    a, b = _weights(ws_full, "pretrain-v1"), _weights(ws_kill, "pretrain-v1")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_resume_without_a_run_is_a_clear_error(tmp_path):
    line = one_line_error(run("pretrain", "--workspace", str(tmp_path), "--resume"))
    assert "no unfinished 'pretrain' run" in line


def test_top_level_help_and_light_commands_do_not_import_torch():
    """`prefloop --help`, `prefloop ppo --help` and the like start in about a second: the parser,
    every stage's flags included (prefloop.configs), is built and parsed without importing
    torch/transformers."""
    code = (
        "import sys; from prefloop.cli import build_parser; "
        "a = build_parser().parse_args(['ppo', '--kl-coef', '0.2', '--lora-r', '8']); "
        "assert a.kl_coef == 0.2 and a.lora_r == 8; "
        "print('torch' in sys.modules, 'transformers' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
