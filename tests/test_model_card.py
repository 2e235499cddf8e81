"""Hub model cards: the front matter the Hub reads, and a text that fits the model."""

from __future__ import annotations

from huggingface_hub import ModelCard

from nmt.checkpoint import Checkpoint
from nmt.serving.model_card import model_card

METRICS = [{"epoch": 1, "train_ppl": 30.0, "valid_ppl": 20.0, "valid_bleu": 10.0, "lr": 0.001, "epoch_time_s": 90.0},
           {"epoch": 2, "train_ppl": 12.0, "valid_ppl": 9.0, "valid_bleu": 21.5, "lr": 0.0005, "epoch_time_s": 90.0}]
SCORES = {"bleu": 40.5, "chrf": 60.25, "test_set": "test_2016_flickr", "bleu_signature": "nrefs:1|tok:13a"}


def card_for(translator, replace_unk: bool, tmp_path) -> ModelCard:
    ckpt = translator.checkpoint
    extra = {"decode": {"beam_size": 5, "replace_unk": replace_unk, "length_penalty": 0.7}}
    card = model_card(Checkpoint(ckpt.model, ckpt.src_vocab, ckpt.tgt_vocab, "de", "en", extra), SCORES,
                      "scripts/train_bundled.sh de-en-x", "2 cores of a test CPU (no GPU)", METRICS)
    card.save(tmp_path / "README.md")
    return ModelCard.load(tmp_path / "README.md")  # what the Hub would read back


def test_card_front_matter_and_facts(tiny_translators, tmp_path):
    card = card_for(tiny_translators["general"], True, tmp_path)
    data = card.data.to_dict()
    assert data["language"] == ["de", "en"] and data["pipeline_tag"] == "translation"
    assert data["license"] and data["datasets"] and set(data["metrics"]) == {"bleu", "chrf"}
    assert "attention-general" in data["tags"]
    n = tiny_translators["general"].model.num_parameters()
    for fact in ("general attention", f"{n / 1e6:.2f} M parameters", "40.50", "60.25", "UNK replacement",
                 "length penalty 0.7", "scripts/train_bundled.sh de-en-x", "3 minutes on 2 cores of a test CPU",
                 "| 2 | 12.00 | 9.00 | 21.50 | 0.0005 |"):
        assert fact in card.text, fact


def test_card_of_a_model_without_attention(tiny_translators, tmp_path):
    card = card_for(tiny_translators["none"], False, tmp_path)
    assert "without attention" in card.text and "no UNK replacement" in card.text
    assert "attentional" not in card.text and "attention-none" in card.data.tags


def test_card_says_how_the_weights_were_made(tiny_translators):
    ckpt = tiny_translators["general"].checkpoint

    def text(extra):
        return model_card(Checkpoint(ckpt.model, ckpt.src_vocab, ckpt.tgt_vocab, "de", "en", extra), SCORES,
                          "cmd", "a CPU", METRICS).text

    guided = text({"train": {"guided_alignment": True, "guided_alignment_weight": 0.5, "guided_alignment_decay": 0.9},
                   "checkpoint": {"epoch": 17}})
    assert "guided towards word alignments" in guided and "weight 0.5, decay 0.9" in guided
    assert "The weights are epoch 17's." in guided
    averaged = text({"train": {"guided_alignment": False}, "checkpoint": {"epoch": 16},
                     "averaged": ["runs/r/epoch-16", "runs/r/epoch-17", "runs/r/epoch-18"]})
    assert "average of 3 checkpoints (epoch-16, epoch-17, epoch-18)" in averaged
    assert "guided" not in averaged and "epoch 16's" not in averaged
    assert "The weights are" not in text({})
