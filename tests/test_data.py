"""Reading parallel text, vocabularies, batching, tokenization."""

from __future__ import annotations

import gzip

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nmt.data import ParallelDataset, read_lines, read_parallel, tokenize_pair_files
from nmt.errors import DataError
from nmt.tokenization import get_tokenizer, split_sentences
from nmt.vocabulary import SPECIALS, UNK_ID, Vocabulary


def write(path, lines, gz=False):
    data = "".join(line + "\n" for line in lines).encode()
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def test_vocabulary_specials_frequency_and_cap():
    v = Vocabulary.build([["a", "b", "a"], ["c", "a", "b"], ["d"]], max_size=6, min_freq=1)
    assert v.itos[:4] == list(SPECIALS) and v.itos[4:] == ["a", "b"]
    v2 = Vocabulary.build([["a", "b", "a"], ["c"]], max_size=100, min_freq=2)
    assert v2.itos[4:] == ["a"] and v2.encode(["a", "zzz"]) == [4, UNK_ID]


def test_vocabulary_roundtrip(tmp_path):
    v = Vocabulary.build([["Haus", "ä", "<x>"]], 100)
    v.save(tmp_path / "v")
    assert Vocabulary.load(tmp_path / "v").itos == v.itos


@given(st.lists(st.lists(st.text(alphabet="abcdé", min_size=1, max_size=3), max_size=6), max_size=8))
def test_vocabulary_decode_inverts_encode_for_known_words(sents):
    v = Vocabulary.build(sents, 1000)
    for s in sents:
        assert v.decode(v.encode(s)) == s


def test_reads_plain_and_gzip(tmp_path):
    assert read_lines(write(tmp_path / "a.txt", ["x y", "z"])) == ["x y", "z"]
    assert read_lines(write(tmp_path / "a.gz", ["x y", "z"], gz=True)) == ["x y", "z"]


def test_mismatched_line_counts_name_the_file_and_line(tmp_path):
    src = write(tmp_path / "s.txt", ["a", "b", "c"])
    tgt = write(tmp_path / "t.txt", ["a", "b"])
    with pytest.raises(DataError, match=r"t\.txt ends after line 2, so line 3 has no translation"):
        read_parallel(src, tgt)


def test_bad_files_give_clear_errors(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        read_lines(tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_bytes(b"")
    with pytest.raises(DataError, match="empty"):
        read_lines(tmp_path / "empty.txt")
    (tmp_path / "bad.txt").write_bytes(b"ok\nbad \xff\n")
    with pytest.raises(DataError, match=r"bad\.txt, line 2: not valid UTF-8"):
        read_lines(tmp_path / "bad.txt")
    (tmp_path / "broken.gz").write_bytes(gzip.compress(b"a\nb\n")[:-9])
    with pytest.raises(DataError, match="cannot read"):
        read_lines(tmp_path / "broken.gz")


def test_long_and_empty_pairs_are_dropped_and_counted(tmp_path, caplog):
    src = write(tmp_path / "s", ["ein Hund", "", "a b c d e f g", "eine Katze"])
    tgt = write(tmp_path / "t", ["a dog", "nothing", "x", "a cat"])
    s, t = tokenize_pair_files(src, tgt, "de", "en", max_len=4)
    assert s == [["ein", "Hund"], ["eine", "Katze"]] and len(t) == 2
    assert "dropped 1 empty and 1 pairs longer than 4" in caplog.text


def test_batches_cover_everything_with_little_padding():
    import random

    rng = random.Random(0)
    src = [[5] * rng.randint(1, 30) for _ in range(500)]
    tgt = [[6] * rng.randint(1, 30) for _ in range(500)]
    data = ParallelDataset(src, tgt)
    batches = list(data.batches(32, shuffle=True, seed=1))
    assert sorted(i for b in batches for i in b.index) == list(range(500))
    real = sum(int(b.src_lengths.sum()) for b in batches)
    assert real / sum(b.src.numel() for b in batches) > 0.9  # random batches: about 0.65
    again = [b.index for b in data.batches(32, shuffle=True, seed=1)]
    assert again == [b.index for b in batches]
    assert again != [b.index for b in data.batches(32, shuffle=True, seed=2)]
    ordered = [int(b.src_lengths.max()) for b in data.batches(32, shuffle=True, seed=1, in_order=True)]
    assert ordered == sorted(ordered)


def test_batch_tensors():
    b = ParallelDataset([[5, 6], [7]], [[8], [9, 10]]).make_batch([0, 1])
    assert b.src.tolist() == [[5, 6], [7, 0]] and b.src_lengths.tolist() == [2, 1]
    assert b.tgt_in.tolist() == [[2, 8, 0], [2, 9, 10]] and b.tgt_out.tolist() == [[8, 3, 0], [9, 10, 3]]


def test_moses_tokenization_keeps_case_and_detokenizes():
    tok = get_tokenizer("en")
    assert tok.tokenize("A dog's ball, isn't it?") == ["A", "dog", "'s", "ball", ",", "isn", "'t", "it", "?"]
    assert tok.detokenize(["A", "dog", "runs", "."]) == "A dog runs."
    assert get_tokenizer("de").tokenize("Ein Hund läuft.") == ["Ein", "Hund", "läuft", "."]


def test_split_sentences():
    assert split_sentences("Ein Hund läuft. Eine Katze schläft! Was nun?") == ["Ein Hund läuft.", "Eine Katze schläft!", "Was nun?"]
    assert split_sentences("Dr. Müller kommt z.B. heute. Gut.") == ["Dr. Müller kommt z.B. heute.", "Gut."]
    assert split_sentences("eins\n\nzwei") == ["eins", "zwei"]
    assert split_sentences("   ") == []
