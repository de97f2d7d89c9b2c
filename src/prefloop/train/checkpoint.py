"""Checkpoints without pickle: weights, optimizer state and RNG in safetensors, the rest in JSON.

A checkpoint is written to a temporary folder and renamed into place, so a run killed at any
moment leaves either the previous checkpoint or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, load_model, save_file, save_model


def _optimizer_tensors(
    opt: torch.optim.Optimizer,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for idx, state in sd["state"].items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{idx}.{key}"] = value.detach().clone().contiguous()
            else:
                scalars[f"{idx}.{key}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def save_checkpoint(
    folder: Path,
    step: int,
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    extra: dict[str, Any],
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"step-{step:08d}"
    tmp = folder / f".tmp-step-{step:08d}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_model(model, str(tmp / "model.safetensors"))  # handles tied weights
    opt_tensors, opt_meta = _optimizer_tensors(opt)
    save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
    save_file({"torch": torch.get_rng_state()}, str(tmp / "rng.safetensors"))
    state = {"step": step, "optimizer": opt_meta, "python_rng": _py_rng_to_json(), **extra}
    (tmp / "state.json").write_text(json.dumps(state))
    for f in tmp.iterdir():  # durable before the rename makes it visible
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in sorted(folder.glob("step-*"))[:-2]:  # keep the two newest
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(folder: Path) -> Path | None:
    done = sorted(p for p in folder.glob("step-*") if (p / "state.json").exists())
    return done[-1] if done else None


def load_checkpoint(
    path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer
) -> dict[str, Any]:
    """Restore model, optimizer and RNG in place; returns the JSON state (step, task state, ...)."""
    state = json.loads((path / "state.json").read_text())
    load_model(model, str(path / "model.safetensors"))
    tensors = load_file(str(path / "optimizer.safetensors"))
    per_param: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        idx, name = key.split(".", 1)
        per_param.setdefault(int(idx), {})[name] = value
    for key, value in state["optimizer"]["scalars"].items():
        idx, name = key.split(".", 1)
        per_param.setdefault(int(idx), {})[name] = value
    opt.load_state_dict({"state": per_param, "param_groups": state["optimizer"]["param_groups"]})
    torch.set_rng_state(load_file(str(path / "rng.safetensors"))["torch"])
    py = state["python_rng"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    return state


def _py_rng_to_json() -> list[Any]:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]
