"""The workspace: one folder where stages meet.

    W/
      config.yaml            one section per stage (pretrain:, sft:, reward:, ppo:, ...)
      models/<version>/      Hugging Face format (config.json, model.safetensors, tokenizer files)
                             + prefloop.json (stage, parent, data, metrics, created)
      models/PRODUCTION      the name of the production version
      preferences.db         the SQLite preference store (unless --db points elsewhere)
      runs/<stage>-<ts>/     checkpoints and TensorBoard logs of one run
      reports/               HTML/markdown reports

Stages never call each other; they read and write versions here.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from prefloop.errors import PrefloopError

DEFAULT_WORKSPACE = "prefloop-workspace"
META_FILE = "prefloop.json"

DEFAULT_CONFIG = """\
# prefloop workspace config: one section per stage; command-line flags override these.
# Every option and its default is listed by `prefloop <stage> --help`.
pretrain: {}
sft: {}
pairs: {}
reward: {}
ppo: {}
"""


@dataclass(frozen=True)
class ModelVersion:
    name: str
    path: Path
    meta: dict[str, Any]

    @property
    def stage(self) -> str:
        return str(self.meta.get("stage", ""))


class Workspace:
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    # ---- layout -------------------------------------------------------------------------
    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    @property
    def reports_dir(self) -> Path:
        return self.root / "reports"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def db_url(self) -> str:
        return f"sqlite:///{(self.root / 'preferences.db').resolve()}"

    @classmethod
    def init(cls, root: str | os.PathLike[str]) -> Workspace:
        ws = cls(root)
        for d in (ws.root, ws.models_dir, ws.runs_dir, ws.reports_dir, ws.data_dir):
            d.mkdir(parents=True, exist_ok=True)
        cfg = ws.root / "config.yaml"
        if not cfg.exists():
            cfg.write_text(DEFAULT_CONFIG)
        return ws

    @classmethod
    def open(cls, root: str | os.PathLike[str], create: bool = True) -> Workspace:
        """Open a workspace; the default one is created on first use."""
        if not Path(root).exists():
            if not create:
                raise PrefloopError(f"workspace {root} does not exist (run `prefloop init {root}`)")
            return cls.init(root)
        return cls.init(root)  # idempotent: fills in missing sub-folders

    def config_section(self, stage: str) -> dict[str, Any]:
        path = self.root / "config.yaml"
        if not path.exists():
            return {}
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise PrefloopError(f"invalid YAML: {e}", file=str(path)) from None
        if not isinstance(data, dict):
            raise PrefloopError("expected a mapping of stage sections", file=str(path))
        section = data.get(stage) or {}
        if not isinstance(section, dict):
            raise PrefloopError("expected a mapping", file=str(path), field=stage)
        return section

    def new_run_dir(self, stage: str) -> Path:
        base = f"{stage}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        for n in range(1000):  # two runs of a stage in the same second get distinct folders
            path = self.runs_dir / (base if n == 0 else f"{base}-{n}")
            try:
                path.mkdir()
                return path
            except FileExistsError:
                continue
        raise PrefloopError(f"cannot create a run folder for '{stage}' in {self.runs_dir}")

    def run_dir(self, stage: str, resume: bool) -> Path:
        """A new run folder, or with `resume` the newest unfinished run of `stage`."""
        if resume:
            unfinished = [
                d
                for d in sorted(self.runs_dir.glob(f"{stage}-*"))
                if d.is_dir() and not (d / "DONE").exists()
            ]
            if not unfinished:
                raise PrefloopError(f"--resume: no unfinished '{stage}' run in {self.runs_dir}")
            return unfinished[-1]
        return self.new_run_dir(stage)

    # ---- model registry ---------------------------------------------------------------
    def versions(self) -> list[ModelVersion]:
        if not self.models_dir.exists():
            return []
        out = []
        for d in sorted(self.models_dir.iterdir()):
            meta_path = d / META_FILE
            if d.is_dir() and meta_path.exists():
                out.append(ModelVersion(d.name, d, json.loads(meta_path.read_text())))
        return sorted(out, key=lambda v: (v.meta.get("created", 0), v.name))

    def latest(self, stage: str) -> ModelVersion | None:
        matching = [v for v in self.versions() if v.stage == stage]
        return matching[-1] if matching else None

    def production(self) -> ModelVersion | None:
        pointer = self.models_dir / "PRODUCTION"
        if not pointer.exists():
            return None
        return self.get(pointer.read_text().strip())

    def get(self, name: str) -> ModelVersion:
        path = self.models_dir / name
        if not (path / META_FILE).exists():
            raise PrefloopError(f"no model version '{name}' in {self.models_dir}")
        return ModelVersion(name, path, json.loads((path / META_FILE).read_text()))

    def resolve(self, ref: str) -> str:
        """A model reference -> a loadable path or hub id.

        Accepts a version name, `production`, `latest:<stage>` (e.g. `latest:sft`), a folder,
        or a hub id (returned unchanged; loading it is the user's business).
        """
        if ref == "production":
            prod = self.production()
            if prod is None:
                raise PrefloopError(
                    "no production model yet (promote one with `prefloop models promote`)"
                )
            return str(prod.path)
        if ref.startswith("latest:"):
            v = self.latest(ref.split(":", 1)[1])
            if v is None:
                raise PrefloopError(f"no model of stage '{ref.split(':', 1)[1]}' in this workspace")
            return str(v.path)
        if (self.models_dir / ref / META_FILE).exists():
            return str(self.models_dir / ref)
        return ref

    def version_of(self, path: str | os.PathLike[str]) -> str | None:
        """The version name of a registry folder, or None for an outside model."""
        p = Path(path).resolve()
        return p.name if p.parent == self.models_dir.resolve() else None

    def register(
        self,
        source_dir: str | os.PathLike[str],
        stage: str,
        parent: str | None = None,
        data: Any = None,
        metrics: dict[str, Any] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> ModelVersion:
        """Move a saved HF model folder into the registry as a new version (atomic rename)."""
        self.models_dir.mkdir(parents=True, exist_ok=True)
        n = sum(1 for v in self.versions() if v.stage == stage) + 1
        name = f"{stage}-v{n}"
        while (self.models_dir / name).exists():
            n += 1
            name = f"{stage}-v{n}"
        meta = {
            "name": name,
            "stage": stage,
            "parent": parent,
            "data": data,
            "metrics": metrics or {},
            "created": time.time(),
            "created_iso": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **(extra or {}),
        }
        src = Path(source_dir)
        (src / META_FILE).write_text(json.dumps(meta, indent=2, default=str))
        dest = self.models_dir / name
        tmp = self.models_dir / f".{name}.tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        shutil.copytree(src, tmp)
        os.replace(tmp, dest)
        return ModelVersion(name, dest, meta)

    def save_model(
        self,
        model: Any,
        tokenizer: Any,
        stage: str,
        *,
        parent: str | None = None,
        data: Any = None,
        metrics: dict[str, Any] | None = None,
        config: dict[str, Any] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> ModelVersion:
        """Save a model + tokenizer in HF format (safetensors) as a new registry version."""
        self.models_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=self.models_dir, prefix=".save-") as tmp:
            model.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
            if config is not None:
                (Path(tmp) / "train_config.json").write_text(
                    json.dumps(config, indent=2, default=str)
                )
            return self.register(tmp, stage, parent=parent, data=data, metrics=metrics, extra=extra)

    def promote(self, name: str) -> ModelVersion:
        v = self.get(name)
        tmp = self.models_dir / ".PRODUCTION.tmp"
        tmp.write_text(name)
        os.replace(tmp, self.models_dir / "PRODUCTION")
        return v
