"""Training: masked (label-smoothed) cross-entropy, validation, LR decay, resumable checkpoints.

A save dir holds ``last/`` (resumable: weights, optimizer, RNG, epoch), ``best/`` (the best
epoch by validation score, a plain model folder) and ``metrics.jsonl`` (one line per epoch).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from nmt.checkpoint import (
    Checkpoint,
    atomic_dir,
    checkpoint_epoch,
    load_checkpoint,
    remove_leftovers,
    resolve_dir,
    write_model_files,
)
from nmt.config import DataConfig, DecodeConfig, EngineConfig, ModelConfig, TrainConfig, VocabConfig, from_dict, to_dict
from nmt.data import Batch, ParallelDataset, read_parallel, tokenize_all, tokenize_pair_files
from nmt.device import pick_device
from nmt.engines.search_engine import Engines, SearchEngine
from nmt.engines.teacher_forcing import TeacherForcing
from nmt.errors import CheckpointError, DataError, NMTError
from nmt.evaluation import corpus_scores, perplexity
from nmt.model.seq2seq import Seq2Seq
from nmt.tokenization import get_tokenizer
from nmt.training.loss import output_positions, sequence_loss
from nmt.training.optim import make_optimizer, optimizer_from_safetensors, optimizer_to_safetensors, step_with_clipping
from nmt.vocabulary import PAD_ID, Vocabulary

log = logging.getLogger(__name__)
OPTIMIZER_FILE, RNG_FILE, STATE_FILE = "optimizer.safetensors", "rng.safetensors", "trainer_state.json"
DIVERGENCE_CHECK_EVERY = 50  # batches between looks at the running loss
DIVERGED_PPL_FACTOR = 10  # validation perplexity above this times the target vocabulary's size: diverged


class TrainingDiverged(NMTError):
    """The loss stopped being finite, or validation is worse than a uniform guess."""


def check_cpu_bf16() -> None:
    """bf16 autocast on a CPU needs oneDNN bf16 LSTM kernels (AVX-512 bf16 or AMX)."""
    lstm = torch.nn.LSTM(8, 8, batch_first=True)
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            lstm(torch.zeros(1, 2, 8))
    except RuntimeError as exc:
        raise ValueError(f"--amp: this CPU cannot run bf16 LSTMs ({str(exc).splitlines()[0][:80]}); train without --amp") from None


@dataclass
class TrainerState:
    epoch: int = 0  # epochs completed
    lr: float = 0.0
    best_score: float | None = None
    best_epoch: int = 0
    prev_valid_ppl: float | None = None
    history: list | None = None


class Trainer:
    def __init__(self, data: DataConfig, vocab: VocabConfig, model: ModelConfig, train: TrainConfig):
        self.data_cfg, self.vocab_cfg, self.model_cfg, self.cfg = data, vocab, model, train
        self.save_dir = Path(train.save_dir)
        self.device = pick_device(train.device)
        self.amp = train.amp if train.amp is not None else self.device.type == "cuda"
        if self.amp and self.device.type == "cpu":
            check_cpu_bf16()
        # Output rows per batch: a multiple of 64 for oneDNN's bf16 (see output_positions).
        self.row_multiple = 64 if self.amp and self.device.type == "cpu" else 1
        self._valid_engines: Engines | None = None
        self._epoch = 0  # the epoch whose weights the model holds (recorded in each checkpoint)
        self.teacher_forcing = TeacherForcing()
        if train.threads:
            torch.set_num_threads(train.threads)
        if not 0 <= train.label_smoothing < 1 or not 0 <= train.scheduled_sampling <= 1:
            raise ValueError("--label-smoothing must be in [0, 1) and --scheduled-sampling in [0, 1]")

    # ---- setup -------------------------------------------------------------------------
    def _load_data(self, src_vocab: Vocabulary | None, tgt_vocab: Vocabulary | None):
        d = self.data_cfg
        for name in ("train_src", "train_tgt", "valid_src", "valid_tgt"):
            if not getattr(d, name):
                raise ValueError(f"--{name.replace('_', '-')} is required")
        log.info("reading and tokenizing %s / %s", d.train_src, d.train_tgt)
        src_tok, tgt_tok = tokenize_pair_files(d.train_src, d.train_tgt, d.src_lang, d.tgt_lang, d.max_len)
        if src_vocab is None:
            src_vocab = Vocabulary.build(src_tok, self.vocab_cfg.src_vocab_size, self.vocab_cfg.min_freq)
            tgt_vocab = Vocabulary.build(tgt_tok, self.vocab_cfg.tgt_vocab_size, self.vocab_cfg.min_freq)
        self.src_vocab, self.tgt_vocab = src_vocab, tgt_vocab
        self.train_data = ParallelDataset([src_vocab.encode(s) for s in src_tok], [tgt_vocab.encode(t) for t in tgt_tok])
        self.valid_raw_src, self.valid_raw_tgt = read_parallel(d.valid_src, d.valid_tgt)
        self.valid_src_tok = tokenize_all(self.valid_raw_src, d.src_lang)
        valid_tgt_tok = tokenize_all(self.valid_raw_tgt, d.tgt_lang)
        keep = [i for i, (s, t) in enumerate(zip(self.valid_src_tok, valid_tgt_tok)) if s and t]
        if not keep:
            raise DataError(f"{d.valid_src} / {d.valid_tgt}: no validation pair has words on both sides "
                            "(the files hold only blank lines)")
        self.valid_data = ParallelDataset([src_vocab.encode(self.valid_src_tok[i]) for i in keep],
                                          [tgt_vocab.encode(valid_tgt_tok[i]) for i in keep])
        log.info("%d training pairs, %d validation pairs; vocabularies: %d source, %d target words",
                 len(self.train_data), len(self.valid_data), len(src_vocab), len(tgt_vocab))

    def _setup(self) -> TrainerState:
        if self.cfg.train_from:
            return self._resume(Path(self.cfg.train_from))
        random.seed(self.cfg.seed)
        torch.manual_seed(self.cfg.seed)
        self._load_data(None, None)
        self.model_cfg.src_vocab, self.model_cfg.tgt_vocab = len(self.src_vocab), len(self.tgt_vocab)
        self.model = Seq2Seq(self.model_cfg).to(self.device)
        self.optimizer = make_optimizer(self.cfg.optim, self.model.parameters(), self.cfg.learning_rate)
        return TrainerState(lr=self.cfg.learning_rate, history=[])

    def _resume(self, run_dir: Path) -> TrainerState:
        last = resolve_dir(run_dir / "last")
        if not (last / STATE_FILE).is_file():
            raise CheckpointError(f"{run_dir}: no resumable checkpoint (expected {last / STATE_FILE})")
        ckpt = load_checkpoint(last, self.device, max_parameters=math.inf)  # (a run of one's own: no size limit)
        self.model, self.model_cfg = ckpt.model.train(), ckpt.model.cfg
        # The run continues with its own settings; the command only sets epochs, device and threads.
        saved_train = from_dict(TrainConfig, ckpt.extra["train"])
        saved_train.epochs, saved_train.device, saved_train.threads = self.cfg.epochs, self.cfg.device, self.cfg.threads
        saved_train.save_dir, saved_train.train_from = str(run_dir), ""
        self.cfg, self.save_dir = saved_train, run_dir
        self.data_cfg = from_dict(DataConfig, ckpt.extra["data"])
        self.vocab_cfg = from_dict(VocabConfig, ckpt.extra["vocab"])
        self._load_data(ckpt.src_vocab, ckpt.tgt_vocab)
        saved = json.loads((last / STATE_FILE).read_text())
        state = TrainerState(**saved["trainer"])
        self.optimizer = make_optimizer(self.cfg.optim, self.model.parameters(), state.lr)
        self.optimizer.load_state_dict(optimizer_from_safetensors(load_file(str(last / OPTIMIZER_FILE)), saved["optimizer"]))
        rng = load_file(str(last / RNG_FILE))
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state(rng["cuda"])
        py = saved["python_rng"]
        random.setstate((py[0], tuple(py[1]), py[2]))
        log.info("resuming %s after epoch %d (lr %g)", run_dir, state.epoch, state.lr)
        self._epoch = state.epoch
        return state

    def _repair_best(self, state: TrainerState) -> None:
        """Make ``best/`` hold the best epoch. A run killed while writing ``best/`` (which follows
        ``last/``) leaves the previous best there; ``last/`` then holds the best epoch's weights."""
        if not state.best_epoch:
            return
        best = resolve_dir(self.save_dir / "best")
        if checkpoint_epoch(best) == state.best_epoch:
            return
        if state.best_epoch != state.epoch:  # (also a run from before checkpoints recorded their epoch)
            log.info("cannot check that %s holds epoch %d, the best, against last/", best, state.best_epoch)
            return
        log.warning("%s did not hold epoch %d, the best (a write was interrupted): rewriting it from last/",
                    best, state.best_epoch)
        metrics = self._write_metrics(state.history, self.save_dir)
        with atomic_dir(self.save_dir / "best") as tmp:
            write_model_files(tmp, self._checkpoint(), metrics=metrics)

    # ---- one epoch ---------------------------------------------------------------------
    def _autocast(self):
        if not self.amp:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def train_epoch(self, epoch: int) -> dict:
        self.model.train()
        in_order = self.data_cfg.curriculum and epoch == 1
        batches = list(self.train_data.batches(self.data_cfg.batch_size, shuffle=True, seed=self.cfg.seed + epoch, in_order=in_order))
        # Sums stay on the device: reading them (a host-device sync) only when the progress bar shows them.
        total_loss = total_nll = torch.zeros((), device=self.device)
        n_src = n_tgt = 0
        start = time.perf_counter()
        bar = tqdm(batches, desc=f"epoch {epoch}", unit="batch", dynamic_ncols=True, mininterval=1.0,
                   disable=None if os.environ.get("NMT_PROGRESS", "1") == "1" else True)
        shown = start
        for number, batch in enumerate(bar, start=1):
            n_src += int(batch.src_lengths.sum())  # counted on the CPU copy of the batch
            n_tgt += batch.n_tgt_tokens
            loss, nll = self.train_step(batch.to(self.device))
            total_loss, total_nll = total_loss + loss, total_nll + nll
            if number % DIVERGENCE_CHECK_EVERY == 0 and not torch.isfinite(total_loss):  # (a sync: only now and then)
                raise self._diverged(epoch, f"the training loss became {float(total_loss)} at batch {number}")
            now = time.perf_counter()
            if not bar.disable and now - shown >= 1.0:
                shown = now
                bar.set_postfix(loss=f"{float(total_loss) / n_tgt:.3f}", ppl=f"{perplexity(-float(total_nll), n_tgt):.1f}",
                                tok_s=f"{(n_src + n_tgt) / (now - start):.0f}", refresh=False)
        total_loss, total_nll = float(total_loss), float(total_nll)
        elapsed = time.perf_counter() - start
        return {"train_loss": total_loss / n_tgt, "train_ppl": perplexity(-total_nll, n_tgt),
                "src_tokens_per_s": n_src / elapsed, "tgt_tokens_per_s": n_tgt / elapsed, "epoch_time_s": elapsed}

    def train_step(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """One update; returns the batch's summed loss and NLL as (detached) device scalars."""
        positions = output_positions(batch.tgt_out != PAD_ID, self.row_multiple)
        with self._autocast():
            if TeacherForcing.supports(self.device, self.cfg.scheduled_sampling):  # (the CPU engine: same gradients)
                logits, _ = self.teacher_forcing.forward(self.model, batch.src, batch.src_lengths, batch.tgt_in, positions)
            else:
                logits, _ = self.model(batch.src, batch.src_lengths, batch.tgt_in, self.cfg.scheduled_sampling,
                                       only=positions)
        # (sequence_loss drops the padding targets of the rounding rows, which come last)
        loss, nll = sequence_loss(logits, batch.tgt_out.flatten()[positions], self.cfg.label_smoothing)
        self.optimizer.zero_grad(set_to_none=True)
        (loss / batch.src.size(0)).backward()
        step_with_clipping(self.optimizer, list(self.model.parameters()), self.cfg.max_grad_norm)
        return loss.detach(), nll.detach()

    @torch.inference_mode()
    def validate(self) -> dict:
        self.model.eval()
        total, tokens = 0.0, 0
        for batch in self.valid_data.batches(64, shuffle=False):
            batch = batch.to(self.device)
            with self._autocast():
                logits, _ = self.model(batch.src, batch.src_lengths, batch.tgt_in)
            total -= float(sequence_loss(logits, batch.tgt_out, 0.0)[1])
            tokens += batch.n_tgt_tokens
        n = self.cfg.valid_bleu_sents or len(self.valid_src_tok)
        ids = [self.src_vocab.encode(tokens) for tokens in self.valid_src_tok[:n]]
        hyps = self._validation_search().search_ids(ids, DecodeConfig(beam_size=1, batch_size=64))
        detok = get_tokenizer(self.data_cfg.tgt_lang).detokenize
        texts = [detok(self.tgt_vocab.decode(h[0].tokens)) if h else "" for h in hyps]
        bleu = corpus_scores(texts, self.valid_raw_tgt[:n]).bleu
        self.model.train()
        return {"valid_ppl": perplexity(total, tokens), "valid_bleu": bleu}

    def _validation_search(self) -> SearchEngine:
        """Made once for the model (it keeps a CPU trace, or on a GPU the search's CUDA graphs,
        from one validation to the next: the same shapes, and they read the weights where they lie)."""
        if self._valid_engines is None or self._valid_engines.model is not self.model:
            self._valid_engines = Engines(self.model, self.device)
        return self._valid_engines.get(EngineConfig())

    def _check_divergence(self, epoch: int, record: dict) -> None:
        """Stop, before anything of this epoch is saved, if training has diverged: a loss that is
        not finite, or a validation perplexity ten times that of a uniform guess over the target
        words (an untrained model is about as good as that guess; a diverged one is astronomically worse)."""
        if not math.isfinite(record["train_loss"]):
            raise self._diverged(epoch, f"the training loss is {record['train_loss']}")
        if not record["valid_ppl"] <= DIVERGED_PPL_FACTOR * len(self.tgt_vocab):
            raise self._diverged(epoch, f"the validation perplexity is {record['valid_ppl']:.3g}, more than "
                                        f"{DIVERGED_PPL_FACTOR} times a uniform guess over the "
                                        f"{len(self.tgt_vocab):,} target words")

    def _diverged(self, epoch: int, what: str) -> TrainingDiverged:
        kept = f"{self.save_dir}/last holds epoch {epoch - 1}" if epoch > 1 else "nothing was saved"
        return TrainingDiverged(f"training diverged in epoch {epoch}: {what}. Nothing of this epoch was saved "
                                f"({kept}). Train again with a lower --learning-rate "
                                f"(this run: {self.cfg.learning_rate:g}) or a smaller --max-grad-norm.")

    # ---- checkpoints -------------------------------------------------------------------
    def _checkpoint(self) -> Checkpoint:
        extra = {"data": to_dict(self.data_cfg), "vocab": to_dict(self.vocab_cfg), "train": to_dict(self.cfg),
                 "checkpoint": {"epoch": self._epoch}}
        return Checkpoint(self.model, self.src_vocab, self.tgt_vocab, self.data_cfg.src_lang, self.data_cfg.tgt_lang, extra)

    def _save_last(self, state: TrainerState) -> None:
        tensors, meta = optimizer_to_safetensors(self.optimizer)
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state()
        py = random.getstate()
        with atomic_dir(self.save_dir / "last") as tmp:
            write_model_files(tmp, self._checkpoint())
            save_file(tensors, str(tmp / OPTIMIZER_FILE))
            save_file(rng, str(tmp / RNG_FILE))
            (tmp / STATE_FILE).write_text(json.dumps({"trainer": state.__dict__, "optimizer": meta,
                                                      "python_rng": [py[0], list(py[1]), py[2]]}))

    @staticmethod
    def _write_metrics(history: list, folder: Path) -> Path:
        """``folder/metrics.jsonl`` with one line per epoch, replaced atomically."""
        path = folder / "metrics.jsonl"
        tmp = path.with_suffix(".jsonl.tmp")
        try:
            tmp.write_text("".join(json.dumps(h) + "\n" for h in history))
            os.replace(tmp, path)
        except OSError as exc:
            raise CheckpointError(f"cannot write {path} ({exc.strerror or exc}); free some space or choose a "
                                  "writable --save-dir") from None
        return path

    def _decay(self, state: TrainerState, epoch: int, valid_ppl: float) -> None:
        scheduled = self.cfg.start_decay_at and epoch >= self.cfg.start_decay_at
        plateau = self.cfg.decay_on_plateau and state.prev_valid_ppl is not None and valid_ppl >= state.prev_valid_ppl
        if scheduled or plateau:
            state.lr *= self.cfg.lr_decay
            for group in self.optimizer.param_groups:
                group["lr"] = state.lr
            log.info("learning rate decayed to %g", state.lr)
        state.prev_valid_ppl = valid_ppl

    # ---- the loop ----------------------------------------------------------------------
    def run(self) -> Path:
        state = self._setup()
        log.info("model: %d parameters on %s%s", self.model.num_parameters(), self.device, " (bf16 autocast)" if self.amp else "")
        try:
            self.save_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CheckpointError(f"cannot create the save dir {self.save_dir} ({exc.strerror or exc})") from None
        for leftover in remove_leftovers(self.save_dir):
            log.info("removed %s, left by an interrupted checkpoint write", leftover)
        self._repair_best(state)
        for epoch in range(state.epoch + 1, self.cfg.epochs + 1):
            lr = state.lr
            record = {"epoch": epoch, "lr": lr, **self.train_epoch(epoch), **self.validate()}
            self._check_divergence(epoch, record)
            self._decay(state, epoch, record["valid_ppl"])
            score = record["valid_bleu"] if self.cfg.select_by == "bleu" else -record["valid_ppl"]
            improved = state.best_score is None or score > state.best_score
            if improved:
                state.best_score, state.best_epoch = score, epoch
            state.epoch = self._epoch = epoch
            state.history.append(record)
            self._save_last(state)
            metrics = self._write_metrics(state.history, self.save_dir)
            if improved:
                with atomic_dir(self.save_dir / "best") as tmp:
                    write_model_files(tmp, self._checkpoint(), metrics=metrics)
            log.info("epoch %d: train ppl %.2f, valid ppl %.2f, valid BLEU %.2f, %.0f tok/s%s", epoch,
                     record["train_ppl"], record["valid_ppl"], record["valid_bleu"],
                     record["src_tokens_per_s"] + record["tgt_tokens_per_s"], " (best)" if improved else "")
        best = resolve_dir(self.save_dir / "best")
        if best.exists():  # best/ was written at its epoch: give it the whole curve
            self._write_metrics(state.history, best)
        return best
