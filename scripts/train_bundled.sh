#!/usr/bin/env bash
# Trains the bundled checkpoints with the project's own training command.
# Usage: scripts/train_bundled.sh [NAME ...]   (default: all six)
# Runs go to runs/NAME (or $RUNS/NAME); scripts/export_bundled.py NAME then writes checkpoints/NAME (fp16).
set -euo pipefail
DATA=${DATA:-../shared/data/multi30k}
EPOCHS=${EPOCHS:-15}
COMMON=(--emb-size 256 --hidden 256 --layers 1 --brnn --input-feed --no-bridge --dropout 0.3
        --tie-embeddings --min-freq 2 --max-len 50 --batch-size 64 --optim adam --learning-rate 0.001
        --label-smoothing 0.1 --max-grad-norm 5 --seed 3435 --keep-checkpoints 5)
# AMP=1: bf16 autocast (CPUs with AMX or AVX-512 bf16; fp32 master weights): the bundled models were
# trained so.
[ "${AMP:-0}" = 1 ] && COMMON+=(--amp)
# (The last 5 epochs are kept: scripts/export_bundled.py bundles their average where validation prefers it.)
# EXTRA="--track-sentences 5": more flags for every run (word splitting intended); RUNS: where runs go.
read -r -a extra <<< "${EXTRA:-}"
COMMON+=("${extra[@]}")
RUNS=${RUNS:-runs}

# The flagship de-en-general learns its attention from eflomal's word links too (guided alignment,
# Chen et al. 2016; scripts/align_multi30k.sh writes them), for 20 epochs: validation AER 0.18
# against 0.32 unguided, at the same BLEU.
ALIGN=${ALIGN:-alignments}
GUIDED=(--guided-alignment --guided-alignment-weight 0.5 --alignfile "$ALIGN/train.de-en.align"
        --alignvalfile "$ALIGN/val.de-en.align")

# The character-CNN encoder of de-en-general-chars (seq2seq-attn's char_vec_size, kernel_width and
# highway layers; 512 filters keep it under the word model's parameters).
CHARS=(--use-chars-enc --char-vec-size 25 --kernel-width 6 --num-kernels 512 --num-highway-layers 2 --max-word-length 35)

train() {  # NAME SRC TGT ATTENTION [EXTRA FLAGS...]   (EPOCHS: this run's epochs)
  local name=$1 src=$2 tgt=$3 attn=$4 run=$RUNS/$1
  shift 4
  if [ -f "$run/last/trainer_state.json" ]; then
    python -m nmt train --train-from "$run" --epochs "$EPOCHS"
  else
    python -m nmt train "${COMMON[@]}" --epochs "$EPOCHS" "$@" --attention "$attn" --src-lang "$src" --tgt-lang "$tgt" \
      --train-src "$DATA/train.$src.gz" --train-tgt "$DATA/train.$tgt.gz" \
      --valid-src "$DATA/val.$src.gz" --valid-tgt "$DATA/val.$tgt.gz" --save-dir "$run"
  fi
}

names=("$@")
[ ${#names[@]} -gt 0 ] || names=(de-en-general de-en-dot de-en-concat de-en-none en-de-general de-en-general-chars)
for name in "${names[@]}"; do
  case $name in
    de-en-general)
      [ -f "$ALIGN/train.de-en.align" ] || OUT=$ALIGN scripts/align_multi30k.sh
      EPOCHS=${EPOCHS_GUIDED:-20} train "$name" de en general "${GUIDED[@]}" ;;
    de-en-dot) train "$name" de en dot ;;
    de-en-concat) train "$name" de en concat ;;
    de-en-none) train "$name" de en none ;;
    en-de-general) train "$name" en de general ;;
    de-en-general-chars) train "$name" de en general "${CHARS[@]}" ;;
    *) echo "unknown model $name" >&2; exit 2 ;;
  esac
done
