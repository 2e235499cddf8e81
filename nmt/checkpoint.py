"""Checkpoint folders: config.json + model.safetensors + vocabularies (+ metrics.jsonl).

Nothing here unpickles: weights are safetensors, everything else is JSON or text.
Folders are written to a temporary sibling and renamed into place, so a process killed
at any moment leaves either the old or the new checkpoint, never a mixture.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import struct
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from nmt.config import FORMAT_VERSION, DecodeConfig, ModelConfig, from_dict, to_dict
from nmt.errors import CheckpointError
from nmt.hub import (  # the file names, shared with the Hub client (which needs no torch)
    INDEX_FILES,
    LEXICON_FILE,
    MASKS_FILE,
    PICKLE_SUFFIXES,
    REQUIRED_FILES,
    TRACKED_FILE,
)
from nmt.inputs import SourceInputs, spellings
from nmt.model.seq2seq import Seq2Seq
from nmt.safe_io import KIB, MAX_LEXICON_BYTES, MIB, checkpoint_file, current_umask, decode_lines, read_capped
from nmt.vocabulary import Vocabulary

logger = logging.getLogger(__name__)
CONFIG, WEIGHTS, SRC_VOCAB, TGT_VOCAB, METRICS = REQUIRED_FILES + ("metrics.jsonl",)
MAX_PARAMETERS = 500_000_000  # 2 GB as fp32; the app sets a lower limit (NMT_MAX_PARAMETERS)
MAX_CONFIG_BYTES, MAX_VOCAB_BYTES, MAX_METRICS_BYTES = 256 * KIB, 64 * MIB, 4 * MIB
MAX_TRACKED_BYTES = 4 * MIB  # tracked.jsonl (nmt.serving.tracked): a few KB an epoch
MAX_HEADER_BYTES = 1 * MIB  # a safetensors header of this model family is a few KB
# The nearest-neighbour index (nmt.serving.neighbors): settings, arrays (~20 MB for Multi30k), each side's sentences.
MAX_INDEX_CONFIG_BYTES, MAX_INDEX_ARRAYS_BYTES, MAX_INDEX_TEXT_BYTES = 64 * KIB, 256 * MIB, 64 * MIB
FLOAT_DTYPES = ("F32", "F16", "BF16")


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
    lexicon: Path | None = None  # the checkpoint's own 'source ||| target' file (decode.lexicon), inside path
    chars: Vocabulary | None = None  # the characters of char-CNN inputs (use_chars_enc / use_chars_dec)
    features: list[Vocabulary] = field(default_factory=list)  # each source word feature's values

    def __post_init__(self):
        cfg = getattr(self.model, "cfg", None)  # (a test's scripted model has none)
        if cfg is not None and cfg.use_chars_dec and self.chars is not None:  # (the decoder spells the target words)
            self.model.decoder.embeddings.set_spelling(spellings(self.tgt_vocab.itos, self.chars,
                                                                 self.model.cfg.max_word_length))

    @property
    def inputs(self) -> SourceInputs:
        """How this model's source tokens become its encoder's input ids."""
        cfg = getattr(self.model, "cfg", None)
        if cfg is None:
            return SourceInputs(self.src_vocab)
        return SourceInputs(self.src_vocab, cfg.src_features, self.chars if cfg.use_chars_enc else None,
                            self.features, cfg.max_word_length)


def state_dict_for_saving(model: Seq2Seq, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """The weights without tied duplicates, contiguous, optionally cast (e.g. to fp16)."""
    sd = model.state_dict()
    if model.cfg.tie_embeddings:
        sd.pop("generator.weight")
    return {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).contiguous().cpu() for k, v in sd.items()}


def write_model_files(folder: Path, ckpt: Checkpoint, dtype: torch.dtype | None = None, metrics: Path | None = None) -> None:
    """The checkpoint files; config.json records the weights' SHA-256 (``checkpoint.weights_sha256``)."""
    save_file(state_dict_for_saving(ckpt.model, dtype), str(folder / WEIGHTS), metadata={"format": "pt"})
    previous = ckpt.extra.get("checkpoint")
    record = {**(previous if isinstance(previous, dict) else {}), "weights_sha256": file_sha256(folder / WEIGHTS)}
    config = {"format_version": FORMAT_VERSION, "src_lang": ckpt.src_lang, "tgt_lang": ckpt.tgt_lang,
              **ckpt.extra, "checkpoint": record, "model": to_dict(ckpt.model.cfg)}
    if ckpt.chars is not None or ckpt.features:
        config["inputs"] = {"chars": ckpt.chars.itos if ckpt.chars is not None else None,
                            "features": [v.itos for v in ckpt.features]}
    (folder / CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    ckpt.src_vocab.save(folder / SRC_VOCAB)
    ckpt.tgt_vocab.save(folder / TGT_VOCAB)
    if metrics is not None and metrics.exists():
        shutil.copyfile(metrics, folder / METRICS)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def atomic_dir(final: Path):
    """Context manager: yields a temporary folder that replaces ``final`` on success. A failure to
    write (disk full, read-only folder) is a CheckpointError; ``final`` is then left as it was."""
    return _AtomicDir(Path(final))


def remove_leftovers(folder: Path) -> list[Path]:
    """Delete the temporary folders (``.NAME.tmp-*``) that a killed write left in ``folder``."""
    leftovers = sorted(p for p in Path(folder).glob(".*.tmp-*") if p.is_dir())
    for p in leftovers:
        shutil.rmtree(p, ignore_errors=True)
    return leftovers


class _AtomicDir:
    def __init__(self, final: Path):
        self.final = final

    def __enter__(self) -> Path:
        try:
            self.final.parent.mkdir(parents=True, exist_ok=True)
            self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.final.name}.tmp-", dir=self.final.parent))
        except OSError as exc:
            raise self._error(exc) from None
        return self.tmp

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            if issubclass(exc_type, (OSError, SafetensorError)):
                raise self._error(exc) from None
            return False
        try:
            self._commit()
        except OSError as exc:
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise self._error(exc) from None
        return False

    def _error(self, exc: BaseException) -> CheckpointError:
        reason = getattr(exc, "strerror", None) or str(exc)
        return CheckpointError(f"cannot write the checkpoint {self.final} ({reason}); free some space or choose "
                               "a writable folder (--save-dir). The previous checkpoint there, if any, is kept.")

    def _commit(self) -> None:
        mask = current_umask()
        for f in self.tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
            os.chmod(f, 0o666 & ~mask)  # (safetensors and mkdtemp make them private; a checkpoint is shared)
        os.chmod(self.tmp, 0o777 & ~mask)
        old = self.final.with_name(f".{self.final.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        if self.final.exists():
            os.rename(self.final, old)  # a crash here leaves `.NAME.old`, which resolve_dir finds
        os.rename(self.tmp, self.final)
        shutil.rmtree(old, ignore_errors=True)


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
    data = read_capped(checkpoint_file(folder, CONFIG), MAX_CONFIG_BYTES, "config")
    try:
        config = json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # (the message names a position, never the content)
        if isinstance(exc, json.JSONDecodeError):
            reason = f"{exc.msg} at line {exc.lineno}, column {exc.colno}"
        else:
            reason = "nested too deeply" if isinstance(exc, RecursionError) else "not UTF-8"
        raise CheckpointError(f"{folder / CONFIG}: unreadable, not valid JSON ({reason})") from None
    version = config.get("format_version") if isinstance(config, dict) else None
    if not isinstance(version, int) or not 1 <= version <= FORMAT_VERSION:
        raise CheckpointError(f"{folder / CONFIG}: format version {version!r} is not supported "
                              f"(this nmt reads versions 1 to {FORMAT_VERSION})")
    return config


def load_checkpoint(folder: str | Path, device: str | torch.device = "cpu",
                    max_parameters: int = MAX_PARAMETERS) -> Checkpoint:
    """Load a checkpoint folder (weights are cast to fp32).

    The folder is untrusted: its config and the safetensors header are checked against each other
    (names, shapes, dtypes) and against ``max_parameters`` before any weight is allocated, and no file
    outside the folder is read (see :mod:`nmt.safe_io`)."""
    folder = Path(folder)
    config = read_config(folder)
    try:
        cfg = from_dict(ModelConfig, config.get("model"), "model")
        cfg.validate()
        decode = from_dict(DecodeConfig, config.get("decode", {}), "decode")
        decode.validate()
        with torch.device("meta"):  # names and shapes of the weights, allocating nothing
            expected = Seq2Seq(cfg).state_dict()
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{folder / CONFIG}: {exc}") from None
    lexicon = checkpoint_file(folder, decode.lexicon, "lexicon (decode.lexicon)") if decode.lexicon else None
    if lexicon is not None and not lexicon.is_file():
        raise CheckpointError(f"{folder / CONFIG}: decode.lexicon names {decode.lexicon!r}, which is not a file of the "
                              f"checkpoint (a checkpoint's lexicon is its {LEXICON_FILE})")
    optional = {"generator.weight"} if cfg.tie_embeddings else set()
    weights_file = checkpoint_file(folder, WEIGHTS)
    check_weights(weights_file, expected, optional, max_parameters)
    try:
        weights = load_file(str(weights_file))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{folder / WEIGHTS}: unreadable ({exc})") from None
    model = Seq2Seq(cfg)
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in weights.items()}, strict=False)
    src_vocab, tgt_vocab = read_vocabulary(folder, SRC_VOCAB), read_vocabulary(folder, TGT_VOCAB)
    if len(src_vocab) != cfg.src_vocab or len(tgt_vocab) != cfg.tgt_vocab:
        raise CheckpointError(f"{folder}: vocabulary files do not match the model's sizes")
    chars, features = read_inputs(config.get("inputs", {}), cfg, folder)
    extra = {k: v for k, v in config.items() if k not in ("format_version", "src_lang", "tgt_lang", "model", "inputs")}
    model.to(device).eval()
    return Checkpoint(model, src_vocab, tgt_vocab, _lang(config, "src_lang", "de", folder),
                      _lang(config, "tgt_lang", "en", folder), extra, folder, lexicon, chars, features)


def read_inputs(section, cfg: ModelConfig, folder: Path) -> tuple[Vocabulary | None, list[Vocabulary]]:
    """The character and feature vocabularies of config.json's ``inputs``, checked against the model's sizes."""
    where = f"{folder / CONFIG}: inputs"
    if not isinstance(section, dict):
        raise CheckpointError(f"{where} must be a JSON object")
    chars, features = section.get("chars"), section.get("features") or []
    needs_chars = cfg.use_chars_enc or cfg.use_chars_dec
    if needs_chars != (chars is not None) or (needs_chars and not _words(chars, cfg.char_vocab)):
        raise CheckpointError(f"{where}.chars must list the model's {cfg.char_vocab} characters (or be absent "
                              "for a model without character inputs)")
    if not isinstance(features, list) or len(features) != len(cfg.feature_vocabs) or not all(
            _words(v, n) for v, n in zip(features, cfg.feature_vocabs)):
        raise CheckpointError(f"{where}.features must list the values of each of the model's "
                              f"{len(cfg.feature_vocabs)} features")
    try:
        return (Vocabulary(chars) if chars is not None else None), [Vocabulary(v) for v in features]
    except ValueError as exc:
        raise CheckpointError(f"{where}: {exc}") from None


def _words(values, n: int) -> bool:
    return isinstance(values, list) and len(values) == n and all(isinstance(v, str) and len(v) < 1000 for v in values)


def download_limits(max_parameters: int) -> dict[str, int]:
    """The largest file of each name a checkpoint download may bring (see ``nmt.hub.resolve_checkpoint``)."""
    return {CONFIG: MAX_CONFIG_BYTES, WEIGHTS: max_weights_bytes(max_parameters), SRC_VOCAB: MAX_VOCAB_BYTES,
            TGT_VOCAB: MAX_VOCAB_BYTES, METRICS: MAX_METRICS_BYTES, TRACKED_FILE: MAX_TRACKED_BYTES,
            LEXICON_FILE: MAX_LEXICON_BYTES,
            **dict(zip(INDEX_FILES, (MAX_INDEX_CONFIG_BYTES, MAX_INDEX_ARRAYS_BYTES, MAX_INDEX_TEXT_BYTES,
                                     MAX_INDEX_TEXT_BYTES))),
            MASKS_FILE: 8 + MAX_HEADER_BYTES + max_parameters}  # (a byte a weight: nmt.training.prune)


def max_weights_bytes(n_parameters: int) -> int:
    """The largest safetensors file of so many parameters: fp32, after a header of at most MAX_HEADER_BYTES."""
    return 8 + MAX_HEADER_BYTES + 4 * n_parameters


def check_weights(path: Path, expected: dict[str, torch.Tensor], optional: set[str], max_parameters: int) -> None:
    """The safetensors header at ``path`` must hold exactly the ``expected`` names (those in
    ``optional`` may be absent) with their shapes, in a float dtype, and the model must have at
    most ``max_parameters``. Reads only the header."""
    n_params = sum(t.numel() for name, t in expected.items() if name not in optional)
    if n_params > max_parameters:
        raise CheckpointError(f"{path.parent}: the model has {n_params:,} parameters, over this program's limit "
                              f"of {max_parameters:,}")
    size = path.stat().st_size
    with open(path, "rb") as fh:
        header = fh.read(8)
    if len(header) < 8 or struct.unpack("<Q", header)[0] > MAX_HEADER_BYTES:
        raise CheckpointError(f"{path}: not a safetensors file of this program (its header is missing or over "
                              f"{MAX_HEADER_BYTES // MIB} MiB)")
    if size > max_weights_bytes(n_params):
        raise CheckpointError(f"{path}: {size:,} bytes is more than {n_params:,} parameters need")
    try:
        with safe_open(str(path), framework="pt") as f:
            found = {name: (tuple(f.get_slice(name).get_shape()), f.get_slice(name).get_dtype()) for name in f.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None
    missing = sorted(set(expected) - set(found) - optional)
    unexpected = sorted(set(found) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{path}: the weights do not match config.json (missing {_few(missing)}, "
                              f"unexpected {_few(unexpected)})")
    for name, (shape, dtype) in found.items():
        if shape != tuple(expected[name].shape):
            raise CheckpointError(f"{path}: {name} has shape {list(shape)}, but config.json makes it "
                                  f"{list(expected[name].shape)}")
        if dtype not in FLOAT_DTYPES:
            raise CheckpointError(f"{path}: {name} is {dtype}; weights must be F32, F16 or BF16")


def _few(names: list[str]) -> str:
    return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "") if names else "none"


def _lang(config: dict, key: str, default: str, folder: Path) -> str:
    value = config.get(key, default)
    if not isinstance(value, str) or not value.isascii() or not value.isalpha() or len(value) > 8:
        raise CheckpointError(f"{folder / CONFIG}: {key!r} must be a language code such as 'de'")
    return value


def read_vocabulary(folder: Path, name: str) -> Vocabulary:
    path = checkpoint_file(folder, name)
    lines = decode_lines(read_capped(path, MAX_VOCAB_BYTES, "vocabulary"), str(path), CheckpointError)
    try:
        return Vocabulary(lines)
    except ValueError as exc:
        raise CheckpointError(f"{path}: {exc}") from None


def checkpoint_epoch(folder: Path) -> int | None:
    """The training epoch a checkpoint records (``checkpoint.epoch``) if its weights are the ones it
    recorded (``checkpoint.weights_sha256``); None for a missing, unreadable or inconsistent one."""
    try:
        record = read_config(Path(folder)).get("checkpoint") or {}
        epoch, digest = record.get("epoch"), record.get("weights_sha256")
        consistent = isinstance(digest, str) and file_sha256(Path(folder) / WEIGHTS) == digest
    except (CheckpointError, OSError, AttributeError):
        return None
    return epoch if consistent and isinstance(epoch, int) else None


def read_metrics(folder: str | Path | None) -> list[dict]:
    """The per-epoch records of ``folder/metrics.jsonl`` (unreadable lines are skipped), by epoch."""
    if folder is None or not (Path(folder) / METRICS).is_file():
        return []
    try:
        data = read_capped(checkpoint_file(Path(folder), METRICS), MAX_METRICS_BYTES, "training log")
    except CheckpointError as exc:
        logger.warning("%s", exc)
        return []
    records = []
    for line in data.decode("utf-8", errors="replace").split("\n"):
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):
            continue
        if isinstance(record, dict):
            numbers = {k: finite_number(v) for k, v in record.items()}  # (a checkpoint's numbers may be anything)
            if numbers.get("epoch") is not None:
                records.append({k: v for k, v in numbers.items() if v is not None})
    return sorted(records, key=lambda r: r["epoch"])


def finite_number(value) -> float | int | None:
    """``value`` if it is a finite number (not a bool), else None: what a checkpoint says may be anything."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        return value if math.isfinite(value) else None
    except OverflowError:
        return None
