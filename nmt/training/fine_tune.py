"""What ``--train-from DIR`` does, and which flags it takes.

- DIR is a save dir (``last/`` holds a resumable state) and ``--fine-tune`` is not given: the run
  continues exactly, with its own settings; only ``RESUME_FLAGS`` apply, any other flag given is
  ignored, and said so.
- Otherwise (a model folder: ``best/``, a pruned or averaged model, a bundled checkpoint; or a save dir
  with ``--fine-tune``, whose ``last/`` weights are taken): fine-tuning, seq2seq-attn's ``train_from``.
  The weights and vocabularies come from DIR; the data and training settings from this command, with
  a new optimizer and schedule, epochs numbered from ``--start-epoch``. The architecture cannot change:
  a model or vocabulary flag that differs from DIR's is an error.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from nmt.checkpoint import CONFIG, resolve_dir
from nmt.config import ModelConfig, TrainConfig, VocabConfig
from nmt.errors import CheckpointError

STATE_FILE = "trainer_state.json"
# What an exact resumption takes from the command: where and how long it runs, and what it prints.
RESUME_FLAGS = ("epochs", "device", "threads", "dist_timeout", "train_from", "save_dir", "print_every")


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def given(cfg) -> dict:
    """The fields of a config dataclass set to other than their defaults (the flags a command gave)."""
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)
            if f.metadata.get("help") is not None and getattr(cfg, f.name) != f.default}


def is_resumable(folder: Path) -> bool:
    """Whether ``folder`` is a save dir whose ``last/`` can be resumed exactly."""
    return (resolve_dir(folder / "last") / STATE_FILE).is_file()


def model_folder(folder: Path) -> Path:
    """The weights fine-tuning starts from: a save dir's ``last/``, or the model folder itself."""
    if is_resumable(folder):
        return resolve_dir(folder / "last")
    if not (folder / CONFIG).is_file():
        raise CheckpointError(f"{folder}: neither a save dir (with last/{STATE_FILE}) nor a model folder "
                              f"(with {CONFIG})")
    return folder


def ignored_on_resume(pairs) -> list[str]:
    """The flags an exact resumption drops: every one given (``pairs``: the command's config, the
    run's) with another value than the run's, but RESUME_FLAGS."""
    return [flag(name) for cfg, saved in pairs for name, value in given(cfg).items()
            if name not in RESUME_FLAGS and name != "fine_tune" and getattr(saved, name) != value]


def check_fine_tuning(model: ModelConfig, vocab: VocabConfig, train: TrainConfig, saved: ModelConfig,
                      start: Path) -> None:
    """Refuse what fine-tuning cannot do: change the architecture or the vocabularies, or write into
    the folder it starts from."""
    changed = [f"{flag(k)} {v} (the checkpoint has {getattr(saved, k)})" for k, v in given(model).items()
               if getattr(saved, k) != v]
    changed += [f"{flag(k)} (the vocabularies are the checkpoint's)" for k in given(vocab)]
    if changed:
        raise ValueError("fine-tuning keeps the model's architecture and vocabularies; drop "
                         + "; ".join(changed))
    if not train.start_epoch >= 1 or train.epochs < train.start_epoch:
        raise ValueError(f"--start-epoch {train.start_epoch} must be at least 1 and at most --epochs ({train.epochs}), "
                         "the number of the last epoch")
    save_dir, start = Path(train.save_dir).resolve(), start.resolve()
    if save_dir == start or start.is_relative_to(save_dir) or save_dir.is_relative_to(start):
        raise ValueError(f"--save-dir {train.save_dir} holds (or is inside) {start}, the checkpoint fine-tuning "
                         "starts from: give another folder")
