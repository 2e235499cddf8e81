"""Hugging Face Hub model cards (README.md with YAML front matter) for checkpoints."""

from __future__ import annotations

import html
from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData

from nmt.checkpoint import Checkpoint

ATTENTION_NAMES = {
    "none": "no attention (the decoder sees only the encoder's final state)",
    "dot": "global dot attention (Luong et al. 2015)",
    "general": "global general attention (Luong et al. 2015)",
    "concat": "global concat/MLP attention (Bahdanau et al. 2015)",
}


def describe(ckpt: Checkpoint) -> str:
    """One paragraph on the architecture."""
    c = ckpt.model.cfg
    cell = c.rnn_type.upper()
    enc = f"{'bidirectional ' if c.brnn else ''}{cell} encoder ({c.layers} layer{'s' * (c.layers > 1)}, {c.encoder_size} hidden"
    enc += ", directions summed" if c.brnn and c.brnn_merge == "sum" else ""
    enc += ", residual" if c.res_net else ""
    enc += ", source reversed)" if c.reverse_src else ")"
    if c.decoder == "bahdanau":
        order = " in Bahdanau order (attention from the previous state)"
    else:
        order = " with input feeding" if c.input_feed and c.attention != "none" else ""
    order += f", attention on layer {c.multi_attn} too" if c.multi_attn else ""
    tied = ", decoder input and output embeddings tied" if c.tie_embeddings else ""
    return (f"{enc}, {cell} decoder{order} ({c.hidden} hidden), {ATTENTION_NAMES[c.attention]}, "
            f"{_inputs(ckpt)}{tied}, dropout {c.dropout}; "
            f"{ckpt.model.num_parameters() / 1e6:.2f} M parameters; vocabularies of "
            f"{len(ckpt.src_vocab):,} {ckpt.src_lang} and {len(ckpt.tgt_vocab):,} {ckpt.tgt_lang} words.")


def _inputs(ckpt: Checkpoint) -> str:
    """The input layers: word embeddings, or characters (char-CNN + highway), and word features."""
    c = ckpt.model.cfg
    chars = (f"a character CNN ({c.num_kernels} filters of width {c.kernel_width}, {c.num_highway_layers} highway "
             f"layers) over each word")
    src = chars if c.use_chars_enc else f"{c.emb_size}-d word embeddings"
    if c.src_features:
        src += f" with {len(c.feature_vocabs)} word feature{'s' * (len(c.feature_vocabs) > 1)} ({c.src_features})"
    if c.use_chars_enc == c.use_chars_dec:
        return src + (" on both sides" if c.use_chars_enc else "")
    return f"source: {src}; target: " + (chars if c.use_chars_dec else f"{c.emb_size}-d word embeddings")


def model_card(ckpt: Checkpoint, scores: dict, command: str, hardware: str, metrics: list[dict],
               tracked: list[dict] | None = None) -> ModelCard:
    """The card: front matter (language, license, datasets, metrics, tags, pipeline tag) and text; with
    ``tracked`` (``nmt.serving.tracked.read_tracked`` records), the first tracked sentence's greedy
    translation after every epoch."""
    data = ModelCardData(
        language=[ckpt.src_lang, ckpt.tgt_lang], license="mit", datasets=["bentrevett/multi30k"],
        metrics=["bleu", "chrf"], tags=["translation", "seq2seq", "lstm", "attention", f"attention-{ckpt.model.cfg.attention}"],
        pipeline_tag="translation", library_name="nmt",
    )
    minutes = sum(m.get("epoch_time_s", 0.0) for m in metrics) / 60
    decode = ckpt.extra.get("decode", {})
    kind = ckpt.model.cfg.attention
    title = f"attentional LSTM ({kind} attention)" if kind != "none" else "LSTM encoder-decoder without attention"
    unk = "UNK replacement" if decode.get("replace_unk", True) else "no UNK replacement (it needs attention)"
    rows = "\n".join(f"| {m['epoch']} | {m['train_ppl']:.2f} | {m['valid_ppl']:.2f} | {m['valid_bleu']:.2f} | {m['lr']:g} |" for m in metrics)
    text = f"""---
{data.to_yaml()}
---

# {ckpt.src_lang}→{ckpt.tgt_lang} {title}, Multi30k

A word-level {'attentional ' if kind != 'none' else ''}LSTM encoder-decoder trained with this project's `python -m nmt train` on Multi30k task 1
(29,000 training pairs; model selection on `val`).

**Architecture.** {describe(ckpt)}

**Scores** on `{scores.get('test_set', 'test_2016_flickr')}` (detokenized, cased output against the raw references,
beam {decode.get('beam_size', 5)}, {unk}, length penalty {decode.get('length_penalty', 0.0)}):

| BLEU | chrF |
|---|---|
| {scores.get('bleu', float('nan')):.2f} | {scores.get('chrf', float('nan')):.2f} |

sacreBLEU signature: `{scores.get('bleu_signature', '')}`

**Training.** {len(metrics)} epochs, {minutes:.0f} minutes on {hardware}.{_recipe_text(ckpt.extra)} Command:

```bash
{command}
```

| epoch | train ppl | valid ppl | valid BLEU (greedy) | learning rate |
|---|---|---|---|---|
{rows}
{_tracked_text(tracked)}
## Use

```python
import nmt
t = nmt.Translator.load("PATH_OR_REPO_ID")
print(t.translate(["..."], beam_size=5, replace_unk=True)[0].text)
```
"""
    return ModelCard(text)


def _recipe_text(extra: dict) -> str:
    """What the training table alone does not say: guided alignment, and which epoch's weights these are."""
    train = extra.get("train") if isinstance(extra.get("train"), dict) else {}
    parts = []
    if train.get("guided_alignment"):
        parts.append(f" Attention guided towards word alignments (Chen et al. 2016; weight "
                     f"{train.get('guided_alignment_weight')}, decay {train.get('guided_alignment_decay')}).")
    averaged = extra.get("averaged")
    epoch = extra["checkpoint"].get("epoch") if isinstance(extra.get("checkpoint"), dict) else None
    if isinstance(averaged, list) and averaged:
        names = ", ".join(Path(str(a)).name for a in averaged)
        parts.append(f" The weights are the average of {len(averaged)} checkpoints ({names}).")
    elif isinstance(epoch, int):
        parts.append(f" The weights are epoch {epoch}'s.")
    return "".join(parts)


def _tracked_text(tracked: list[dict] | None) -> str:
    """How the first tracked sentence's translation formed, epoch by epoch (``tracked.jsonl``), or nothing."""
    if not tracked:
        return ""
    n = len(tracked[0]["sentences"])
    rows = "\n".join(f"| {r['epoch']} | {_cell(r['sentences'][0]['translation']) or '*(empty)*'} |" for r in tracked)
    return f"""
**Translations forming.** `tracked.jsonl` holds the greedy translation and attention of {n} validation
sentence{'s' * (n > 1)} after every epoch (the app's model card draws the attention with a slider over the epochs).
The first, *{_cell(tracked[0]['sentences'][0]['source'])}*:

| epoch | greedy translation |
|---|---|
{rows}
"""


def _cell(tokens: list[str]) -> str:
    """Words as the text of a Markdown table cell: no HTML, no column break, no emphasis."""
    text = html.escape(" ".join(tokens), quote=False)
    return "".join(f"&#{ord(c)};" if c in "|*_`\\[]" else c for c in text)
