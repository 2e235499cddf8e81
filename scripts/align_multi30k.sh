#!/usr/bin/env bash
# Word-aligns Multi30k German-English for guided alignment training (nmt.alignment), with eflomal.
# Usage: scripts/align_multi30k.sh   (DATA: the Multi30k folder; OUT: the output folder, git-ignored)
# eflomal is unsupervised and aligns better with more text, so train, val and test_2016_flickr are
# aligned together in one run (no reference alignment is used), then split into
# $OUT/{train,val,test_2016_flickr}.de-en.align (source-target links over Moses tokens) and the same
# links swapped for the en-de direction, $OUT/*.en-de.align. eflomal samples from a random seed: a
# rerun gives slightly different links.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data/multi30k}
OUT=${OUT:-alignments}
SPLITS=(train val test_2016_flickr)

fail() { echo "error: $*" >&2; exit 2; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

counts=()
for split in "${SPLITS[@]}"; do
  for lang in de en; do
    [ -f "$DATA/$split.$lang.gz" ] || fail "$DATA/$split.$lang.gz: no such file"
    # (sed '$a\' ends a last line that lacks its newline, so the files join line by line)
    gzip -dc "$DATA/$split.$lang.gz" | sed '$a\' > "$tmp/$split.$lang" || fail "$DATA/$split.$lang.gz: cannot read it"
  done
  de=$(wc -l < "$tmp/$split.de") en=$(wc -l < "$tmp/$split.en")
  [ "$de" -eq "$en" ] || fail "$DATA/$split.de.gz has $de lines but $DATA/$split.en.gz has $en"
  [ "$de" -gt 0 ] || fail "$DATA/$split.de.gz is empty"
  counts+=("$de")
  cat "$tmp/$split.de" >> "$tmp/all.de"
  cat "$tmp/$split.en" >> "$tmp/all.en"
done

python -m nmt align --src "$tmp/all.de" --tgt "$tmp/all.en" --src-lang de --tgt-lang en --out "$tmp/all.align"

mkdir -p "$OUT"
start=1
for i in "${!SPLITS[@]}"; do
  split=${SPLITS[$i]} end=$((start + counts[i] - 1))
  sed -n "${start},${end}p" "$tmp/all.align" > "$tmp/$split.de-en.align"
  [ "$(wc -l < "$tmp/$split.de-en.align")" -eq "${counts[i]}" ] || fail "the aligner wrote too few lines"
  awk '{ for (k = 1; k <= NF; k++) { split($k, p, "-"); $k = p[2] "-" p[1] } print }' \
    "$tmp/$split.de-en.align" > "$tmp/$split.en-de.align"
  mv "$tmp/$split.de-en.align" "$tmp/$split.en-de.align" "$OUT/"
  echo "$OUT/$split.de-en.align, $OUT/$split.en-de.align: ${counts[i]} sentence pairs"
  start=$((end + 1))
done
