"""Checkpoint folders: config.json + model.safetensors + vocabularies (+ metrics.jsonl).

Nothing here unpickles: weights are safetensors, everything else is JSON or text.
Folders are written to a temporary sibling and renamed into place, so a process killed
at any moment leaves either the old or the new checkpoint, never a mixture.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .config import FORMAT_VERSION, ModelConfig, from_dict, to_dict
from .errors import CheckpointError
from .hub import PICKLE_SUFFIXES, REQUIRED_FILES  # the file names, shared with the Hub client (which needs no torch)
from .model import Seq2Seq
from .vocabulary import Vocabulary

CONFIG, WEIGHTS, SRC_VOCAB, TGT_VOCAB, METRICS = REQUIRED_FILES + ("metrics.jsonl",)


@dataclass
class Checkpoint:
    """A trained model with everything needed to translate."""

    model: Seq2Seq
    src_vocab: Vocabulary
    tgt_vocab: Vocabulary
    src_lang: str
    tgt_lang: str
    extra: dict = field(default_factory=dict)  # other config.json entries (training/decoding settings)
    path: Path | None = None


def state_dict_for_saving(model: Seq2Seq, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """The weights without tied duplicates, contiguous, optionally cast (e.g. to fp16)."""
    sd = model.state_dict()
    if model.cfg.tie_embeddings:
        sd.pop("generator.weight")
    return {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).contiguous().cpu() for k, v in sd.items()}


def write_model_files(folder: Path, ckpt: Checkpoint, dtype: torch.dtype | None = None, metrics: Path | None = None) -> None:
    config = {"format_version": FORMAT_VERSION, "src_lang": ckpt.src_lang, "tgt_lang": ckpt.tgt_lang,
              **ckpt.extra, "model": to_dict(ckpt.model.cfg)}
    (folder / CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    save_file(state_dict_for_saving(ckpt.model, dtype), str(folder / WEIGHTS), metadata={"format": "pt"})
    ckpt.src_vocab.save(folder / SRC_VOCAB)
    ckpt.tgt_vocab.save(folder / TGT_VOCAB)
    if metrics is not None and metrics.exists():
        shutil.copyfile(metrics, folder / METRICS)


def atomic_dir(final: Path):
    """Context manager: yields a temporary folder that replaces ``final`` on success."""
    return _AtomicDir(Path(final))


class _AtomicDir:
    def __init__(self, final: Path):
        self.final = final

    def __enter__(self) -> Path:
        self.final.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.final.name}.tmp-", dir=self.final.parent))
        return self.tmp

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return False
        for f in self.tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        old = self.final.with_name(f".{self.final.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        if self.final.exists():
            os.rename(self.final, old)  # a crash here leaves `.NAME.old`, which resolve_dir finds
        os.rename(self.tmp, self.final)
        shutil.rmtree(old, ignore_errors=True)
        return False


def resolve_dir(final: Path) -> Path:
    """``final``, or its previous version if a crash happened between the two renames."""
    final = Path(final)
    old = final.with_name(f".{final.name}.old")
    return old if not final.exists() and old.exists() else final


def save_checkpoint(ckpt: Checkpoint, folder: str | Path, dtype: torch.dtype | None = None,
                    metrics: Path | None = None) -> Path:
    folder = Path(folder)
    with atomic_dir(folder) as tmp:
        write_model_files(tmp, ckpt, dtype, metrics)
    return folder


def read_config(folder: Path) -> dict:
    missing = [f for f in REQUIRED_FILES if not (folder / f).is_file()]
    if missing:
        pickles = sorted(p.name for p in folder.glob("*") if p.suffix in PICKLE_SUFFIXES)
        hint = f" (it holds {', '.join(pickles)}: pickled checkpoints are never loaded)" if pickles else ""
        raise CheckpointError(f"{folder} is not an nmt checkpoint: missing {', '.join(missing)}{hint}")
    try:
        config = json.loads((folder / CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{folder / CONFIG}: unreadable ({exc})") from None
    version = config.get("format_version") if isinstance(config, dict) else None
    if not isinstance(version, int) or not 1 <= version <= FORMAT_VERSION:
        raise CheckpointError(f"{folder / CONFIG}: format version {version!r} is not supported "
                              f"(this nmt reads versions 1 to {FORMAT_VERSION})")
    return config


def load_checkpoint(folder: str | Path, device: str | torch.device = "cpu") -> Checkpoint:
    """Load a checkpoint folder (weights are cast to fp32)."""
    folder = Path(folder)
    config = read_config(folder)
    try:
        cfg = from_dict(ModelConfig, config["model"])
        model = Seq2Seq(cfg)
        weights = load_file(str(folder / WEIGHTS))
    except (KeyError, TypeError, ValueError, SafetensorError, OSError) as exc:
        raise CheckpointError(f"{folder}: cannot build the model ({exc})") from None
    weights = {k: v.float() if v.is_floating_point() else v for k, v in weights.items()}
    result = model.load_state_dict(weights, strict=False)
    allowed_missing = {"generator.weight"} if cfg.tie_embeddings else set()
    if set(result.missing_keys) - allowed_missing or result.unexpected_keys:
        raise CheckpointError(f"{folder / WEIGHTS}: weights do not match the config "
                              f"(missing {result.missing_keys}, unexpected {result.unexpected_keys})")
    src_vocab, tgt_vocab = Vocabulary.load(folder / SRC_VOCAB), Vocabulary.load(folder / TGT_VOCAB)
    if len(src_vocab) != cfg.src_vocab or len(tgt_vocab) != cfg.tgt_vocab:
        raise CheckpointError(f"{folder}: vocabulary files do not match the model's sizes")
    extra = {k: v for k, v in config.items() if k not in ("format_version", "src_lang", "tgt_lang", "model")}
    model.to(device).eval()
    return Checkpoint(model, src_vocab, tgt_vocab, config.get("src_lang", "de"), config.get("tgt_lang", "en"), extra, folder)


def read_metrics(folder: str | Path | None) -> list[dict]:
    """The per-epoch records of ``folder/metrics.jsonl`` (unreadable lines are skipped), by epoch."""
    path = Path(folder) / "metrics.jsonl" if folder is not None else None
    if path is None or not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("epoch"), (int, float)):
            records.append(record)
    return sorted(records, key=lambda r: r["epoch"])
