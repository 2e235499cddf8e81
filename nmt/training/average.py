"""Checkpoint averaging: the element-wise mean of the weights of checkpoints of one model (e.g. the
last epochs of a run), and writing a checkpoint made from others (averaged or pruned).

A checkpoint made from others keeps the first one's settings but not what described its weights:
its test scores (``scores``), its int8 verdict (``int8``: int8 decoding then stays off until measured
again), its ``pruning`` record (an average of pruned weights is no longer sparse), model card, training curves and nearest-neighbour index. Its lexicon is copied.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from safetensors import safe_open

from nmt.checkpoint import (
    CONFIG,
    WEIGHTS,
    Checkpoint,
    atomic_dir,
    load_checkpoint,
    state_dict_for_saving,
    write_model_files,
)
from nmt.config import to_dict
from nmt.errors import CheckpointError

STALE_KEYS = ("scores", "int8", "pruning")  # config.json records true of the source weights only
DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


def average_checkpoints(folders: list[str | Path]) -> Checkpoint:
    """The first checkpoint with the mean of all their weights (summed in fp64, so averaging a checkpoint
    with itself gives it back exactly), recording ``"averaged": [folders]``. The checkpoints must have
    the same architecture, vocabularies and languages."""
    if not folders:
        raise CheckpointError("give at least one checkpoint folder to average")
    first = load_local(folders[0])
    sums = {k: v.double() for k, v in state_dict_for_saving(first.model).items() if v.is_floating_point()}
    for folder in folders[1:]:
        other = load_local(folder)
        check_same_model(first, other)
        for k, v in state_dict_for_saving(other.model).items():
            if k in sums:
                sums[k] += v.double()
    mean = {k: (v / len(folders)).float() for k, v in sums.items()}
    first.model.load_state_dict(mean, strict=False)  # (a tied output layer is the embeddings: absent, still tied)
    first.extra = {**without_stale(first.extra), "averaged": [str(f) for f in folders]}
    return first


def load_local(folder: str | Path) -> Checkpoint:
    """A local checkpoint folder (a clear error for a missing one)."""
    if not Path(folder).is_dir():
        raise CheckpointError(f"{folder}: no such checkpoint folder")
    return load_checkpoint(folder)


def check_same_model(a: Checkpoint, b: Checkpoint) -> None:
    """Checkpoints whose weights can be averaged: the same model settings, vocabularies and inputs."""
    where = f"cannot average {a.path} with {b.path}"
    cfg_a, cfg_b = to_dict(a.model.cfg), to_dict(b.model.cfg)
    differ = sorted(k for k in cfg_a.keys() | cfg_b.keys() if cfg_a.get(k) != cfg_b.get(k))
    if differ:
        settings = ", ".join(f"{k} {cfg_a.get(k)!r} vs {cfg_b.get(k)!r}" for k in differ[:5])
        raise CheckpointError(f"{where}: different models ({settings})")
    for side, va, vb in (("source", a.src_vocab, b.src_vocab), ("target", a.tgt_vocab, b.tgt_vocab)):
        if va.itos != vb.itos:  # (the sizes are equal here: they are in the model settings)
            i = next(i for i, (x, y) in enumerate(zip(va.itos, vb.itos)) if x != y)
            raise CheckpointError(f"{where}: different {side} vocabularies (word {i}: {va.itos[i]!r} vs "
                                  f"{vb.itos[i]!r})")
    if (a.src_lang, a.tgt_lang) != (b.src_lang, b.tgt_lang):
        raise CheckpointError(f"{where}: different languages ({a.src_lang}-{a.tgt_lang} vs {b.src_lang}-{b.tgt_lang})")
    chars = [c.itos if c is not None else None for c in (a.chars, b.chars)]
    if chars[0] != chars[1] or [v.itos for v in a.features] != [v.itos for v in b.features]:
        raise CheckpointError(f"{where}: different character or feature vocabularies")


def without_stale(extra: dict) -> dict:
    return {k: v for k, v in extra.items() if k not in STALE_KEYS}


def check_output_folder(out: str | Path, *sources: str | Path) -> Path:
    """``out`` may be new or an existing checkpoint folder (replaced), never one of the ``sources``
    (that would drop their model card and index) nor anything else."""
    out = Path(out)
    if any(out.resolve() == Path(s).resolve() for s in sources):
        raise CheckpointError(f"{out}: the output is one of the input checkpoints; give another --out folder")
    if out.exists() and not (out.is_dir() and (out / CONFIG).is_file() and (out / WEIGHTS).is_file()):
        raise CheckpointError(f"{out}: exists and is not a checkpoint folder; give a new folder (or a checkpoint "
                              "folder to replace)")
    return out


def stored_dtype(folder: Path) -> torch.dtype:
    """The float dtype a (loaded, so checked) checkpoint stores its weights in: fp16 stays fp16."""
    with safe_open(str(folder / WEIGHTS), framework="pt") as f:
        dtypes = {f.get_slice(name).get_dtype() for name in f.keys()}
    return DTYPES.get(dtypes.pop(), torch.float32) if len(dtypes) == 1 else torch.float32


def save_derived(ckpt: Checkpoint, out: Path, arrays: dict[str, dict[str, torch.Tensor]] | None = None) -> Path:
    """Write ``ckpt`` (loaded from ``ckpt.path``) atomically to ``out`` in the dtype of its source, with its
    lexicon and extra safetensors files (file name -> tensors, e.g. the pruning masks)."""
    from safetensors.torch import save_file

    dtype = stored_dtype(ckpt.path) if ckpt.path is not None else None
    with atomic_dir(out) as tmp:
        write_model_files(tmp, ckpt, dtype)
        if ckpt.lexicon is not None:
            target = tmp / ckpt.lexicon.relative_to(ckpt.path)  # (where decode.lexicon says it is)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(ckpt.lexicon, target)
        for name, tensors in (arrays or {}).items():
            save_file({k: v.contiguous().cpu() for k, v in tensors.items()}, str(tmp / name))
    return out
