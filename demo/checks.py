"""What a request may ask for: input limits and cleaning, the model, the decoding settings, and
the messages (status HTML) every endpoint answers with."""

from __future__ import annotations

import html
import os
import unicodedata
from pathlib import Path

from nmt import CheckpointError, DataError, Translation, Translator, split_sentences
from nmt.serving import catalog, jobs

MAX_CHARS = 2000  # characters per request
MAX_SENTENCES = 20  # sentences per request (one heatmap slot each)
MAX_WORDS = 100  # words per sentence
MAX_BEAM = 10
# What one request may cost, whatever a (Hub) checkpoint's own decoding defaults say: output length
# at most 3 x the source + 50 words, batches of 20 sentences, a target vocabulary of 200,000 words
# (one step's scores: 20 sentences x beam 10 x 200,000 floats = 160 MB).
REQUEST_LEN_A, REQUEST_LEN_B, REQUEST_BATCH, MAX_TGT_VOCAB = 3.0, 50, 20, 200_000
CONCURRENCY = 4  # requests translating at once; the others wait in the queue
# The engine decides int8 as for the API and the CLI (on a CPU where the checkpoint records that it
# keeps its validation BLEU: nmt.engines.int8); NMT_INT8=0 forces exact fp32.
INT8 = None if os.environ.get("NMT_INT8", "1") != "0" else False
QUEUE_SIZE = 200
MODELS = catalog.discover()
DEFAULT_DIRECTION = next(iter(catalog.directions(MODELS)), "")
TITLE = "Attentional LSTM translation: look inside"

# Control characters mean nothing to the model (newlines and tabs are kept as spacing); bidi
# embedding/override/isolate controls would only scramble how the text is displayed.
_BIDI_CONTROLS = set(range(0x202A, 0x202F)) | set(range(0x2066, 0x206A))


class InputProblem(ValueError):
    """The request cannot be translated as it is; the message tells the user why."""


# ----------------------------------------------------------------------------- checking the input
def clean_text(text: str) -> tuple[str, list[str]]:
    """``text`` without control characters, and notes on what was removed or looks unusual."""
    removed = [c for c in text if _is_control(c)]
    cleaned = "".join(" " if c == "\t" else c for c in text if not _is_control(c))
    notes = []
    if removed:
        codes = ", ".join(sorted({f"U+{ord(c):04X}" for c in removed}))
        notes.append(f"Removed {len(removed)} control character{'s' * (len(removed) > 1)} ({codes}) from the input.")
    if any(unicodedata.category(c) == "So" for c in cleaned):
        notes.append("The input contains emoji or symbols: the model never saw them in training, "
                     "so they are unknown words to it.")
    if any(unicodedata.bidirectional(c) in ("R", "AL") for c in cleaned):
        notes.append("The input contains right-to-left script (e.g. Arabic or Hebrew), which this model "
                     "was not trained on: expect unknown words and a poor translation.")
    return cleaned, notes


def _is_control(c: str) -> bool:
    return (unicodedata.category(c) == "Cc" and c not in "\n\t") or ord(c) in _BIDI_CONTROLS


def split_input(text: str | None) -> tuple[list[str], list[str]]:
    """Sentences to translate and notes; raises InputProblem for empty or oversized input."""
    text = text or ""
    if len(text) > MAX_CHARS:
        raise InputProblem(f"The input is {len(text):,} characters long; the limit is {MAX_CHARS:,}. "
                           "Translate it in smaller parts.")
    cleaned, notes = clean_text(text)
    if not cleaned.strip():
        raise InputProblem("Nothing to translate: type or paste a sentence first"
                           + (" (the input held only control characters)." if notes else "."))
    sentences = split_sentences(cleaned)
    if len(sentences) > MAX_SENTENCES:
        raise InputProblem(f"The input has {len(sentences)} sentences; the limit is {MAX_SENTENCES} per request.")
    for number, sentence in enumerate(sentences, 1):
        if len(sentence.split()) > MAX_WORDS:
            raise InputProblem(f"Sentence {number} has {len(sentence.split())} words; the limit is {MAX_WORDS} "
                               "per sentence. Split it into shorter sentences.")
    return sentences, notes


# ----------------------------------------------------------------------------- choosing the model
def choose_model(direction: str | None, attention: str | None, hub_id: str | None) -> tuple[Translator, dict]:
    """The translator asked for (a Hub repo id wins over the bundled selection) and a description of it."""
    if hub_id and hub_id.strip().startswith(jobs.JOB_PREFIX):  # a model trained in the Train tab
        return trained_model(hub_id.strip()[len(jobs.JOB_PREFIX):])
    if hub_id and hub_id.strip():
        return describe(catalog.CACHE.hub(hub_id), hub_id.strip(), "hub")
    model = _bundled(direction, attention)
    return describe(catalog.CACHE.bundled(model), model.name, "bundled")


def trained_model(job_id: str) -> tuple[Translator, dict]:
    """The best checkpoint of a Train-tab job (``job:<id>``), reloaded when a later epoch replaced it."""
    best = jobs.trained_model_dir(job_id)
    weights = best / "model.safetensors"
    key = ("job", str(best), weights.stat().st_mtime_ns)
    translator = catalog.CACHE.get(key, lambda: Translator.load(best, device=catalog.CACHE.device,
                                                                max_parameters=catalog.CACHE.max_parameters))
    return describe(translator, f"your model (job {job_id.strip()[:8]}…)", "trained here")


def _bundled(direction: str | None, attention: str | None) -> catalog.BundledModel:
    if not MODELS:
        raise CheckpointError(f"No bundled model is available yet ({_shown(catalog.checkpoints_dir())} is empty: "
                              "the models are still being trained). Enter a Hugging Face Hub repo id to use a "
                              "published one.")
    model = catalog.find(MODELS, direction or DEFAULT_DIRECTION, attention or "general")
    if model is None:
        available = ", ".join(m.name for m in MODELS)
        raise CheckpointError(f"No bundled model for direction {direction!r} with attention {attention!r} "
                              f"(bundled: {available}).")
    return model


def describe(translator: Translator, name: str, source: str) -> tuple[Translator, dict]:
    ckpt = translator.checkpoint
    return translator, {"name": name, "source": source, "attention": ckpt.model.cfg.attention,
                        "src_lang": ckpt.src_lang, "tgt_lang": ckpt.tgt_lang, "bleu": catalog.test_bleu(translator)}


def _shown(path: Path) -> str:
    """A path as shown to users: relative to the repository when inside it."""
    try:
        return str(Path(path).resolve().relative_to(catalog.REPO_ROOT))
    except ValueError:
        return str(path)


def decode_options(translator: Translator, beam_size, n_best, replace_unk, lexicon) -> tuple[dict, list[str]]:
    """Keyword arguments for ``Translator.translate`` from the form, and notes on what was adjusted."""
    beam = int(beam_size or 5)
    if not 1 <= beam <= MAX_BEAM:
        raise InputProblem(f"The beam size must be between 1 and {MAX_BEAM} (got {beam}).")
    wanted = int(n_best or 1)
    if wanted < 1:
        raise InputProblem(f"The number of alternatives must be at least 1 (got {wanted}).")
    notes, unk = [], bool(replace_unk)
    if wanted > beam:
        notes.append(f"Showing {beam} alternative{'s' * (beam > 1)}: a beam of {beam} finds no more than that.")
    if unk and not translator.has_attention:
        notes.append("UNK replacement needs attention; this model has none (attention 'none'), so it is off.")
        unk = False
    lexicon_path = _file_path(lexicon)
    if lexicon_path and not unk:
        notes.append("The lexicon is used only with UNK replacement, which is off.")
    if len(translator.checkpoint.tgt_vocab) > MAX_TGT_VOCAB:
        raise InputProblem(f"This model's target vocabulary has {len(translator.checkpoint.tgt_vocab):,} words; "
                           f"this app serves models of up to {MAX_TGT_VOCAB:,}.")
    defaults = translator.defaults
    return {"beam_size": beam, "n_best": min(wanted, beam), "replace_unk": unk,
            "lexicon": lexicon_path if unk and lexicon_path else None,
            "max_len_a": min(defaults.max_len_a, REQUEST_LEN_A), "max_len_b": min(defaults.max_len_b, REQUEST_LEN_B),
            "batch_size": min(defaults.batch_size, REQUEST_BATCH)}, notes


def _file_path(value) -> str | None:
    """The path of an uploaded file (Gradio gives a path string, or a dict from some clients)."""
    if isinstance(value, dict):
        value = value.get("path")
    return str(value) if value else None


def run_translation(translator: Translator, sentences: list[str], options: dict) -> list[Translation]:
    """``translator.translate``, with lexicon errors naming the uploaded file instead of its temporary path."""
    try:
        return translator.translate(sentences, int8=INT8, **options)
    except DataError as exc:
        path = options.get("lexicon")
        message = str(exc).replace(path, f"lexicon {Path(path).name!r}") if path else str(exc)
        raise DataError(message) from None


def failure(message: str, notes: list[str] | None = None) -> tuple[str, dict]:
    return status_html(message, notes or [], error=True), {"ok": False, "error": message, "notes": notes or [],
                                                            "sentences": []}


def status_html(message: str, notes: list[str], error: bool = False) -> str:
    kind, icon = ("nmt-error", "⚠️ ") if error else ("nmt-ok", "")
    head = f'<div class="nmt-status {kind}">{icon}{html.escape(message, quote=False)}</div>'
    return head + "".join(f'<div class="nmt-note">ℹ️ {html.escape(n, quote=False)}</div>' for n in notes)
