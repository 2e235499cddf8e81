"""The bundled checkpoints, and loading models once.

Bundled checkpoints live in ``checkpoints/{src}-{tgt}-{attention}`` (``$NMT_CHECKPOINTS`` overrides the
folder). This module finds them by reading their ``config.json`` only (no weights are loaded), loads
:class:`~nmt.Translator` objects once and caches them (thread-safe), parses Hub ids
(``user/name@revision``), reads ``metrics.jsonl`` and summarises a model for its card. Usable from a script::

    from nmt.serving import catalog
    models = catalog.discover()
    translator = catalog.CACHE.bundled(models[0])
    print(catalog.card_markdown(catalog.summary(translator)))
"""

from __future__ import annotations

import gzip
import html
import json
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from nmt.checkpoint import MAX_PARAMETERS, finite_number, read_metrics
from nmt.config import ATTENTION_KINDS
from nmt.errors import CheckpointError
from nmt.serving.translator import Translator

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
CHECKPOINTS_ENV, DATA_ENV = "NMT_CHECKPOINTS", "NMT_DATA"
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data" / "multi30k"
MAX_CACHED_MODELS = 8
# A server loads what its visitors name: a model of at most this many parameters (200 MB as fp32,
# 40x the bundled ones), and a Hub download cache pruned to this size.
MAX_PARAMETERS_ENV, APP_MAX_PARAMETERS = "NMT_MAX_PARAMETERS", 50_000_000
HUB_CACHE_ENV, APP_HUB_CACHE_MB = "NMT_HUB_CACHE_MB", 2000
HUB_CACHE_DIR_ENV = "NMT_HUB_CACHE_DIR"  # the app's own download cache (never the user's Hub cache)
VARIANTS = {"chars": "char-CNN encoder"}
LANGUAGES = {"de": "German", "en": "English", "fr": "French", "cs": "Czech"}
FALLBACK_EXAMPLES = {
    "de": ["Ein Hund läuft über die Wiese.", "Zwei Männer spielen Fußball im Park.",
           "Eine Frau mit einem roten Hut liest ein Buch.", "Kinder spielen am Strand."],
    "en": ["A dog runs across the meadow.", "Two men are playing soccer in the park.",
           "A woman in a red hat is reading a book.", "Children are playing on the beach."],
}


# ----------------------------------------------------------------------------- the bundled checkpoints
@dataclass(frozen=True)
class BundledModel:
    """A checkpoint folder in the bundled catalog, described from its config.json."""

    name: str
    path: Path
    src_lang: str
    tgt_lang: str
    attention: str
    scores: dict = field(default_factory=dict, compare=False)
    variant: str = ""  # "" for a word model; "chars": a character-CNN encoder (nmt.model.embeddings)

    @property
    def choice(self) -> str:
        """What the app's model radio and its API call this model: the attention kind, or e.g. ``general-chars``."""
        return f"{self.attention}-{self.variant}" if self.variant else self.attention

    @property
    def direction(self) -> str:
        return f"{self.src_lang}-{self.tgt_lang}"

    @property
    def bleu(self) -> float | None:
        return finite_number(self.scores.get("bleu"))

    @property
    def label(self) -> str:
        """E.g. ``general · BLEU 35.12``: the attention type with its test BLEU."""
        kind = f"{self.attention}, {VARIANTS[self.variant]}" if self.variant else self.attention
        return f"{kind} · " + (f"BLEU {self.bleu:.2f}" if self.bleu is not None else "BLEU not measured")


def checkpoints_dir() -> Path:
    """``$NMT_CHECKPOINTS``, else ``<repo>/checkpoints``."""
    return Path(os.environ.get(CHECKPOINTS_ENV) or REPO_ROOT / "checkpoints").expanduser()


def discover(folder: str | Path | None = None) -> list[BundledModel]:
    """The checkpoints in ``folder`` (default :func:`checkpoints_dir`), by direction then attention kind.

    Sub-folders without a readable ``config.json`` (or with an unknown attention kind) are skipped with a
    warning in the log; a missing folder gives an empty list.
    """
    root = Path(folder) if folder is not None else checkpoints_dir()
    if not root.is_dir():
        return []
    models = [m for m in (_describe(p) for p in sorted(root.iterdir()) if p.is_dir() and not p.name.startswith("."))
              if m is not None]
    return sorted(models, key=lambda m: (m.direction, ATTENTION_KINDS.index(m.attention), m.variant, m.name))


def _describe(folder: Path) -> BundledModel | None:
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        attention = config["model"]["attention"]
        src, tgt = str(config["src_lang"]), str(config["tgt_lang"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        logger.warning("skipping %s: not a readable checkpoint config (%s)", folder, exc)
        return None
    if attention not in ATTENTION_KINDS:
        logger.warning("skipping %s: unknown attention kind %r", folder, attention)
        return None
    scores = config.get("scores") if isinstance(config.get("scores"), dict) else {}
    variant = "chars" if config["model"].get("use_chars_enc") is True else ""
    return BundledModel(folder.name, folder, src, tgt, attention, scores, variant)


def directions(models: list[BundledModel]) -> list[str]:
    """The language directions (``de-en``...) present, in catalog order."""
    return list(dict.fromkeys(m.direction for m in models))


def direction_label(direction: str) -> str:
    """``de-en`` -> ``German → English``."""
    src, _, tgt = direction.partition("-")
    return f"{LANGUAGES.get(src, src)} → {LANGUAGES.get(tgt, tgt)}"


def find(models: list[BundledModel], direction: str, choice: str) -> BundledModel | None:
    """The model of this direction whose ``choice`` (attention kind, or kind and variant) this is."""
    return next((m for m in models if m.direction == direction and m.choice == choice), None)


def variants(models: list[BundledModel], direction: str) -> list[BundledModel]:
    """The models of a direction that are not the plain word model of their attention kind."""
    return [m for m in models if m.direction == direction and m.variant]


# ----------------------------------------------------------------------------- Hub ids
def parse_hub_id(text: str) -> tuple[str, str | None]:
    """``user/name`` or ``user/name@revision`` -> ``(repo_id, revision or None)``; raises CheckpointError."""
    from nmt.hub import parse_repo_ref  # imports huggingface_hub: only when a Hub id is used

    text = (text or "").strip()
    if not text:
        raise CheckpointError("no Hub repo id given (expected 'user/name' or 'user/name@revision')")
    if any(c.isspace() for c in text):
        raise CheckpointError(f"{text!r} is not a Hub repo id: it contains spaces "
                              "(expected 'user/name' or 'user/name@revision')")
    return parse_repo_ref(text)


# ----------------------------------------------------------------------------- loading once
class ModelCache:
    """Translators loaded once and kept (least recently used first out beyond ``capacity``).

    Thread-safe: concurrent requests for the same model wait for a single load; different models
    load in parallel. Failed loads are not cached (a Hub that was down may be back next time).
    """

    def __init__(self, capacity: int = MAX_CACHED_MODELS, device: str | None = None,
                 max_parameters: int = MAX_PARAMETERS, hub_cache_dir: str | Path | None = None,
                 hub_cache_bytes: int | None = None):
        self.capacity, self.device = capacity, device  # device None: CUDA when present
        self.max_parameters = max_parameters  # larger models are refused before their weights are downloaded
        # Hub downloads go to ``hub_cache_dir`` (None: the Hub's own cache), which is pruned to
        # ``hub_cache_bytes`` after each Hub load; only a cache of this object's own is pruned.
        self.hub_cache_dir, self.hub_cache_bytes = hub_cache_dir, hub_cache_bytes
        self.loads = 0  # how many models were actually loaded (for tests and logs)
        self._models: OrderedDict[tuple, Translator] = OrderedDict()
        self._loading: dict[tuple, threading.Lock] = {}
        self._lock = threading.Lock()

    def get(self, key: tuple, load: Callable[[], Translator]) -> Translator:
        """The cached translator for ``key``, calling ``load()`` once if it is not there yet."""
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
            key_lock = self._loading.setdefault(key, threading.Lock())
        with key_lock:
            with self._lock:
                if key in self._models:
                    return self._models[key]
            started = time.perf_counter()
            try:
                translator = load()
            except BaseException:
                with self._lock:
                    self._forget_lock(key, key_lock)
                raise
            with self._lock:
                self._forget_lock(key, key_lock)
                self.loads += 1
                self._models[key] = translator
                logger.info("loaded %s on %s in %.1f s", "/".join(map(str, key[1:])), translator.device,
                            time.perf_counter() - started)
                while len(self._models) > self.capacity:
                    self._models.popitem(last=False)
            return translator

    def _forget_lock(self, key: tuple, key_lock: threading.Lock) -> None:
        if self._loading.get(key) is key_lock:
            del self._loading[key]

    def bundled(self, model: BundledModel) -> Translator:
        return self.get(("local", str(model.path)), lambda: Translator.load(model.path, device=self.device,
                                                                           max_parameters=self.max_parameters))

    def hub(self, hub_id: str) -> Translator:
        """A Hub checkpoint (``user/name[@revision]``), downloaded to the Hub cache on first use."""
        repo_id, revision = parse_hub_id(hub_id)
        if Path(repo_id).exists():  # Translator.load would look there, not on the Hub
            raise CheckpointError(f"{repo_id!r} cannot be fetched from the Hub here: "
                                  "a local file or folder of the same name shadows it")
        return self.get(("hub", repo_id, revision), lambda: self._load_hub(repo_id, revision))

    def _load_hub(self, repo_id: str, revision: str | None) -> Translator:
        try:
            return Translator.load(repo_id, revision=revision, device=self.device, max_parameters=self.max_parameters,
                                   cache_dir=self.hub_cache_dir)
        finally:  # (a failed load may have left files too)
            if self.hub_cache_dir is not None and self.hub_cache_bytes is not None:
                from nmt.hub import prune_cache

                with self._lock:  # loaded or loading: in use
                    in_use = {key[1] for key in [*self._models, *self._loading] if key[0] == "hub"}
                prune_cache(self.hub_cache_dir, self.hub_cache_bytes, keep=in_use | {repo_id})


CACHE = ModelCache(max_parameters=int(os.environ.get(MAX_PARAMETERS_ENV) or APP_MAX_PARAMETERS),
                   hub_cache_dir=os.environ.get(HUB_CACHE_DIR_ENV) or Path.home() / ".cache" / "nmt-app" / "hub",
                   hub_cache_bytes=int(os.environ.get(HUB_CACHE_ENV) or APP_HUB_CACHE_MB) * 1_000_000)


# ----------------------------------------------------------------------------- metrics and the model card
def summary(translator: Translator, name: str | None = None) -> dict:
    """What a model card shows: architecture, size, training data and settings, test scores."""
    from nmt.serving.model_card import describe

    ckpt = translator.checkpoint
    cfg = ckpt.model.cfg
    metrics = read_metrics(ckpt.path)
    return {
        "name": name or (ckpt.path.name if ckpt.path else f"{ckpt.src_lang}-{ckpt.tgt_lang}-{cfg.attention}"),
        "direction": f"{ckpt.src_lang}-{ckpt.tgt_lang}", "attention": cfg.attention,
        "architecture": describe(ckpt), "parameters": ckpt.model.num_parameters(),
        "vocab": {"src": len(ckpt.src_vocab), "tgt": len(ckpt.tgt_vocab)},
        "data": _training_data(ckpt.extra), "train": _training_settings(ckpt.extra),
        "epochs_trained": len(metrics), "scores": _section(ckpt.extra, "scores"),
        "decode": _section(ckpt.extra, "decode"), "device": str(translator.device),
    }


def test_bleu(translator: Translator) -> float | None:
    """The test BLEU a checkpoint records (``scores.bleu``), if it is a number."""
    return finite_number(_section(translator.checkpoint.extra, "scores").get("bleu"))


def _section(extra: dict, key: str) -> dict:
    """A config.json section, or {} where it is missing or not an object (a checkpoint is untrusted)."""
    value = extra.get(key)
    return dict(value) if isinstance(value, dict) else {}


def _training_data(extra: dict) -> dict:
    data, vocab = _section(extra, "data"), _section(extra, "vocab")
    names = ("train_src", "train_tgt", "valid_src", "valid_tgt")
    files = {k: Path(v).name for k, v in data.items() if k in names and isinstance(v, str) and v}
    train_src = data.get("train_src")
    corpus = Path(train_src).parent.name if isinstance(train_src, str) and train_src else ""
    return {"corpus": corpus, **files, "max_len": data.get("max_len"), "min_freq": vocab.get("min_freq")}


def _training_settings(extra: dict) -> dict:
    train = _section(extra, "train")
    keys = ("epochs", "optim", "learning_rate", "label_smoothing")
    settings = {k: train[k] for k in keys if k in train}
    if train.get("guided_alignment") is True:
        settings["guided_alignment_weight"] = train.get("guided_alignment_weight")
    if train.get("amp") is True:
        settings["autocast"] = "bf16"
    return settings


def plain(value) -> str:
    """``value`` as inert Markdown text: what a checkpoint says (file names, settings, scores) can
    hold HTML or Markdown links; escaped, it shows as the characters it is, for browsers and API clients."""
    text = html.escape(" ".join(str(value).split()), quote=True)  # (one line: no Markdown block from a newline)
    return "".join(f"&#{ord(c)};" if c in _MARKDOWN_SPECIALS else c for c in text)


_MARKDOWN_SPECIALS = set("\\`*_{}[]()#+!|~")


def card_markdown(info: dict) -> str:
    """The model card as Markdown (from :func:`summary`); every value from the checkpoint is escaped."""
    lines = [f"### {plain(info['name'])}: {plain(direction_label(info['direction']))}, attention "
             f"`{info['attention']}`",
             f"**Architecture.** {info['architecture']}",
             f"**Size.** {info['parameters']:,} parameters ({info['parameters'] * 4 / 2**20:.1f} MiB as fp32).",
             f"**Training data.** {_data_text(info)}",
             f"**Test scores.** {_scores_text(info['scores'])}"]
    if info["decode"]:
        settings = ", ".join(f"{plain(k.replace('_', ' '))} {plain(v)}" for k, v in info["decode"].items())
        lines.append(f"**Decoding defaults.** {settings}")
    lines.append(f"*Running on {info['device']}.*")
    return "\n\n".join(lines)


def _data_text(info: dict) -> str:
    data, train = info["data"], info["train"]
    if not data.get("train_src"):
        return "not recorded in this checkpoint."
    text = f"{plain(data['train_src'])} + {plain(data.get('train_tgt', '?'))}"
    text += f" ({plain(data['corpus'])})" if data["corpus"] else ""
    if data.get("valid_src"):
        text += f", validated on {plain(data['valid_src'])} + {plain(data.get('valid_tgt', '?'))}"
    if data.get("max_len"):
        text += f"; pairs up to {plain(data['max_len'])} tokens"
    if data.get("min_freq"):
        text += f"; words seen at least {plain(data['min_freq'])} times"
    if info["epochs_trained"]:
        text += f". Trained {info['epochs_trained']} epochs"
    if train:
        text += " (" + ", ".join(f"{plain(k.replace('_', ' '))} {plain(v)}" for k, v in train.items() if k != "epochs") + ")"
    return text + "."


def _scores_text(scores: dict) -> str:
    bleu, chrf = finite_number(scores.get("bleu")), finite_number(scores.get("chrf"))
    if bleu is None:
        return "not measured (no `scores` in this checkpoint's config.json)."
    text = f"BLEU **{bleu:.2f}**"
    if chrf is not None:
        text += f", chrF {chrf:.2f}"
    return text + (f" on {plain(scores['test_set'])}" if scores.get("test_set") else "") + "."


# ----------------------------------------------------------------------------- examples
def data_folder() -> Path:
    """The Multi30k folder of the app: ``$NMT_DATA``, else ``../shared/data/multi30k`` next to the repository."""
    return Path(os.environ.get(DATA_ENV) or DEFAULT_DATA).expanduser()


def validation_examples(lang: str, n: int = 6, data_dir: str | Path | None = None) -> list[str]:
    """``n`` short sentences of ``val.{lang}.gz`` (default: the app's data folder, ``data_folder()``),
    else a few built-in sentences."""
    folder = Path(data_dir) if data_dir else data_folder()
    try:
        with gzip.open(folder / f"val.{lang}.gz", "rt", encoding="utf-8") as fh:
            lines = [line.strip() for _, line in zip(range(200), fh)]
    except (OSError, EOFError, UnicodeDecodeError):
        return FALLBACK_EXAMPLES.get(lang, FALLBACK_EXAMPLES["de"])[:n]
    picked = [s for s in lines if 6 <= len(s.split()) <= 15]
    return picked[:n] or FALLBACK_EXAMPLES.get(lang, FALLBACK_EXAMPLES["de"])[:n]
