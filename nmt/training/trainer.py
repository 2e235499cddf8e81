"""Training: masked (label-smoothed) cross-entropy, validation, LR decay, resumable checkpoints.

A save dir holds ``last/`` (resumable: weights, optimizer, RNG, epoch), ``best/`` (the best
epoch by validation score, a plain model folder) and ``metrics.jsonl`` (one line per epoch).

Under torchrun (``nmt.training.distributed``) every process trains on its slice of each global
batch through DistributedDataParallel; process 0 alone validates, decides and writes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from nmt.checkpoint import (
    CONFIG,
    Checkpoint,
    atomic_dir,
    checkpoint_epoch,
    load_checkpoint,
    remove_leftovers,
    resolve_dir,
    write_model_files,
)
from nmt.config import DataConfig, DecodeConfig, EngineConfig, ModelConfig, TrainConfig, VocabConfig, from_dict, to_dict
from nmt.data import Batch, shard
from nmt.device import cpu_bf16_problem, pick_device
from nmt.engines.int8 import INT8_MAX_BLEU_LOSS, int8_keeps_quality
from nmt.engines.search_engine import Engines, SearchEngine
from nmt.engines.teacher_forcing import TeacherForcing
from nmt.errors import CheckpointError, NMTError
from nmt.evaluation import corpus_scores, perplexity
from nmt.hub import MASKS_FILE, TRACKED_FILE
from nmt.model.seq2seq import Seq2Seq
from nmt.safe_io import atomic_output
from nmt.tokenization import get_tokenizer
from nmt.training.corpus import Vocabularies, load_corpus
from nmt.training.distributed import DistributedError, Processes
from nmt.training.fine_tune import STATE_FILE, check_fine_tuning, ignored_on_resume, is_resumable, model_folder
from nmt.training.guidance import AlignmentScore, alignment_loss, check_guidance, guidance_weight
from nmt.training.loss import output_positions, sequence_loss
from nmt.training.optim import (
    make_optimizer,
    optimizer_from_safetensors,
    optimizer_to_safetensors,
    parameter_groups,
    set_learning_rate,
    step_with_clipping,
)
from nmt.training.pretrained import apply_vectors
from nmt.training.prune import apply_masks, load_masks
from nmt.training.tracking import epoch_record, forced_attention, tracked_sentences, write_tracked
from nmt.vocabulary import PAD_ID

log = logging.getLogger(__name__)
OPTIMIZER_FILE, RNG_FILE = "optimizer.safetensors", "rng.safetensors"
INT8_RECORD_SENTENCES = 2000  # validation sentences of the int8 record (Multi30k's val: all 1,014)
DIVERGENCE_CHECK_EVERY = 50  # batches between looks at the running loss
DIVERGED_PPL_FACTOR = 10  # validation perplexity above this times the target vocabulary's size: diverged


class TrainingDiverged(NMTError):
    """The loss stopped being finite, or validation is worse than a uniform guess."""


def check_cpu_bf16() -> None:
    """bf16 autocast on a CPU needs oneDNN bf16 LSTM kernels (AVX-512 bf16 or AMX)."""
    problem = cpu_bf16_problem()
    if problem:
        raise ValueError(f"--amp: this CPU cannot run bf16 LSTMs ({problem}); train without --amp")


@dataclass
class TrainerState:
    epoch: int = 0  # epochs completed
    lr: float = 0.0
    best_score: float | None = None
    best_epoch: int = 0
    prev_valid_ppl: float | None = None
    history: list | None = None
    world_size: int = 1  # processes that trained the last epoch (torchrun); older checkpoints: 1
    tracked: list | None = None  # per epoch, the tracked sentences' greedy translations and attention


class Trainer:
    def __init__(self, data: DataConfig, vocab: VocabConfig, model: ModelConfig, train: TrainConfig):
        self.data_cfg, self.vocab_cfg, self.model_cfg, self.cfg = data, vocab, model, train
        self.save_dir = Path(train.save_dir)
        self.dist = Processes.from_environment()  # None: a single process (no torchrun)
        self.device = pick_device(train.device)
        if self.dist is not None:
            self.device = self.dist.device_for(self.device, train.device)
            if data.batch_size < self.dist.world_size:
                raise ValueError(f"--batch-size {data.batch_size} is the global batch (sentences per step over all "
                                 f"processes): it must be at least the number of processes ({self.dist.world_size})")
            if not train.dist_timeout > 0:
                raise ValueError(f"--dist-timeout must be a positive number of seconds (got {train.dist_timeout})")
        self.amp = train.amp if train.amp is not None else self.device.type == "cuda"
        if self.amp and self.device.type == "cpu":
            check_cpu_bf16()
        # Output rows per batch: a multiple of 64 for oneDNN's bf16 (see output_positions).
        self.row_multiple = 64 if self.amp and self.device.type == "cpu" else 1
        self._valid_engines: Engines | None = None
        self._epoch = 0  # the epoch whose weights the model holds (recorded in each checkpoint)
        self.teacher_forcing = TeacherForcing()
        self._ddp: torch.nn.Module | None = None  # under torchrun: the training forward, wrapped by DDP
        if train.threads:
            torch.set_num_threads(train.threads)
        if not 0 <= train.label_smoothing < 1 or not 0 <= train.scheduled_sampling <= 1:
            raise ValueError("--label-smoothing must be in [0, 1) and --scheduled-sampling in [0, 1]")
        if train.keep_checkpoints < 0 or train.save_every < 1 or train.print_every < 0 or data.curriculum < 0:
            raise ValueError("--keep-checkpoints, --print-every and --curriculum must be at least 0, --save-every at least 1")
        self.masks: dict[str, torch.Tensor] = {}  # a pruned model's (nmt.training.prune): kept at 0 by every step
        self._pruning = None  # its config.json record, carried into every checkpoint written
        self._decode = None  # a fine-tuned checkpoint's decoding defaults (config.json "decode"), carried too
        self.train_links = self.valid_links = None  # word alignments per pair (--alignfile, --alignvalfile)
        self._align_weight, self._align_sums = 0.0, [0.0, 0]  # this epoch's w_e; sum of G and linked rows
        self._tracked_ids = None  # (source tokens, ids) of the sentences --track-sentences follows

    # ---- setup -------------------------------------------------------------------------
    def _load_data(self, saved: Checkpoint | Vocabularies | None):
        """Read the data (``nmt.training.corpus``) and index it with ``saved``'s vocabularies (a resumed or
        fine-tuned run), else with new ones built from the training data."""
        check_guidance(self.data_cfg, self.model_cfg, self.cfg)
        c = load_corpus(self.data_cfg, self.model_cfg, self.vocab_cfg, saved)
        self.src_vocab, self.tgt_vocab, self.chars, self.features = c.vocabs.src_vocab, c.vocabs.tgt_vocab, \
            c.vocabs.chars, c.vocabs.features
        self.src_vocab_inputs = c.vocabs.inputs  # (how a source is read: for --track-file's sentences)
        self.train_data, self.train_links, self.valid_data, self.valid_links = c.train, c.train_links, c.valid, \
            c.valid_links
        self.valid_raw_src, self.valid_raw_tgt, self.valid_src_tok, self.valid_ids = c.valid_raw_src, \
            c.valid_raw_tgt, c.valid_src_tok, c.valid_ids

    def _setup(self) -> TrainerState:
        if self.cfg.train_from:
            start = Path(self.cfg.train_from)
            if is_resumable(start) and not self.cfg.fine_tune:
                return self._resume(start)
            return self._fine_tune(model_folder(start))
        random.seed(self.cfg.seed)
        torch.manual_seed(self.cfg.seed)
        self._load_data(None)
        self.model = Seq2Seq(self.model_cfg)
        self._checkpoint()  # (a model reading characters on the decoder side learns its words' spellings)
        self._pretrained_vectors()
        self.model.to(self.device)
        self.optimizer = self._optimizer(self.cfg.learning_rate)
        if self.dist is not None and not self.dist.is_main:
            self._seed_rank(0)  # the same initial weights everywhere, but each process its own dropout draws
        return TrainerState(lr=self.cfg.learning_rate, history=[], world_size=self.dist.world_size if self.dist else 1)

    def _fine_tune(self, start: Path) -> TrainerState:
        """seq2seq-attn's train_from: ``start``'s weights, vocabularies (and pruning masks), this
        command's data and training settings, a new optimizer and schedule (``nmt.training.fine_tune``)."""
        ckpt = load_checkpoint(start, self.device, max_parameters=math.inf)  # (one's own model: no size limit)
        check_fine_tuning(self.model_cfg, self.vocab_cfg, self.cfg, ckpt.model.cfg, start)
        random.seed(self.cfg.seed)
        torch.manual_seed(self.cfg.seed)
        self.model, self.model_cfg = ckpt.model.train(), ckpt.model.cfg
        decode = ckpt.extra.get("decode")
        self._decode = {k: v for k, v in decode.items() if k != "lexicon"} if isinstance(decode, dict) else None
        self._load_data(ckpt)
        self._load_masks(start, ckpt)
        self._pretrained_vectors()
        self.optimizer = self._optimizer(self.cfg.learning_rate)
        if self.dist is not None and not self.dist.is_main:
            self._seed_rank(0)
        self._epoch = self.cfg.start_epoch - 1
        log.info("fine-tuning %s from epoch %d to %d: its weights and vocabularies, this command's data and settings",
                 start, self.cfg.start_epoch, self.cfg.epochs)
        return TrainerState(epoch=self._epoch, lr=self.cfg.learning_rate, history=[],
                            world_size=self.dist.world_size if self.dist else 1)

    def _load_masks(self, folder: Path, ckpt: Checkpoint) -> None:
        """A pruned model's masks, if ``folder`` has them: retraining keeps its pruned weights at 0."""
        if not (folder / MASKS_FILE).exists():
            return
        self.masks = {k: m.to(self.device) for k, m in load_masks(folder, self.model).items()}
        self._pruning = ckpt.extra.get("pruning")
        apply_masks(self.model, self.masks)
        log.info("%s: pruned weights (%s) stay 0", folder / MASKS_FILE, self._pruning)

    def _optimizer(self, lr: float) -> torch.optim.Optimizer:
        return make_optimizer(self.cfg.optim, parameter_groups(self.model, self.cfg.layer_lrs, self.cfg.learning_rate), lr)

    def _seed_rank(self, epoch: int) -> None:
        """A process other than 0: its own RNG streams (process 0 draws as a single process does)."""
        seed = self.cfg.seed + 1_000_003 * self.dist.rank + 7_919 * epoch
        random.seed(seed)
        torch.manual_seed(seed)

    def _resume(self, run_dir: Path) -> TrainerState:
        last = resolve_dir(run_dir / "last")
        if not (last / STATE_FILE).is_file():
            raise CheckpointError(f"{run_dir}: no resumable checkpoint (expected {last / STATE_FILE})")
        ckpt = load_checkpoint(last, self.device, max_parameters=math.inf)  # (a run of one's own: no size limit)
        # The run continues with its own settings; the command only sets RESUME_FLAGS (epochs, device...).
        saved_train = from_dict(TrainConfig, ckpt.extra["train"])
        saved_data, saved_vocab = from_dict(DataConfig, ckpt.extra["data"]), from_dict(VocabConfig, ckpt.extra["vocab"])
        ignored = ignored_on_resume([(self.data_cfg, saved_data), (self.vocab_cfg, saved_vocab),
                                     (self.model_cfg, ckpt.model.cfg), (self.cfg, saved_train)])
        if ignored:
            log.warning("resuming %s exactly, with its own settings: ignored %s (to change them, add --fine-tune)",
                        run_dir, " ".join(ignored))
        self.model, self.model_cfg = ckpt.model.train(), ckpt.model.cfg
        saved_train.epochs, saved_train.device, saved_train.threads = self.cfg.epochs, self.cfg.device, self.cfg.threads
        saved_train.dist_timeout, saved_train.print_every = self.cfg.dist_timeout, self.cfg.print_every
        saved_train.save_dir, saved_train.train_from = str(run_dir), ""
        self.cfg, self.save_dir = saved_train, run_dir
        self.data_cfg, self.vocab_cfg = saved_data, saved_vocab
        self._load_data(ckpt)
        self._load_masks(last, ckpt)
        self._freeze_fixed_vectors()
        saved = json.loads((last / STATE_FILE).read_text())
        state = TrainerState(**saved["trainer"])
        self.optimizer = self._optimizer(state.lr)
        self.optimizer.load_state_dict(optimizer_from_safetensors(load_file(str(last / OPTIMIZER_FILE)), saved["optimizer"]))
        rng = load_file(str(last / RNG_FILE))
        world_size = self.dist.world_size if self.dist else 1
        rank = self.dist.rank if self.dist else 0
        if state.world_size != world_size:
            log.warning("%s was trained by %d process%s and resumes with %d: the batches are the same, but not "
                        "their split over the processes, dropout draws and float sums, so the run is not "
                        "bit-exact with an uninterrupted one", run_dir, state.world_size,
                        "es" if state.world_size > 1 else "", world_size)
        if rank == 0 or state.world_size != world_size:
            self._set_rng(rng.get("torch"), rng.get("cuda"), saved["python_rng"])
            if rank:
                self._seed_rank(state.epoch)
        else:  # (the same processes: each continues its own streams)
            self._set_rng(rng.get(f"torch.{rank}"), rng.get(f"cuda.{rank}"), saved["python_rng_by_rank"][rank])
        state.world_size = world_size
        log.info("resuming %s after epoch %d (lr %g)", run_dir, state.epoch, state.lr)
        self._epoch = state.epoch
        return state

    @staticmethod
    def _set_rng(torch_state, cuda_state, python_state) -> None:
        torch.set_rng_state(torch_state)
        if cuda_state is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state(cuda_state)
        py = python_state
        random.setstate((py[0], tuple(py[1]), py[2]))

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
            self._write_model(tmp, metrics)

    # ---- one epoch ---------------------------------------------------------------------
    def _autocast(self):
        if not self.amp:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def train_epoch(self, epoch: int) -> dict:
        """One epoch; under torchrun this process's slices of the global batches, and the figures
        returned are those of all processes together."""
        self.model.train()
        self._align_weight, self._align_sums = guidance_weight(self.cfg, epoch), [0.0, 0]
        in_order = epoch <= self.data_cfg.curriculum  # (seq2seq-attn: epochs 1..curriculum in length order)
        seed = self.cfg.seed + epoch
        if self.dist is None:
            batches = list(self.train_data.batches(self.data_cfg.batch_size, shuffle=True, seed=seed, in_order=in_order))
        else:
            batches = self._slices(self.train_data.batch_indices(self.data_cfg.batch_size, True, seed, in_order))
        # Sums stay on the device: reading them (a host-device sync) only when the progress bar shows them.
        total_loss = total_nll = torch.zeros((), device=self.device)
        n_src = n_tgt = 0
        start = time.perf_counter()
        hidden = os.environ.get("NMT_PROGRESS", "1") != "1" or (self.dist is not None and not self.dist.is_main)
        bar = tqdm(batches, desc=f"epoch {epoch}", unit="batch", dynamic_ncols=True, mininterval=1.0,
                   disable=True if hidden else None)
        shown = start
        world = self.dist.world_size if self.dist else 1
        for number, item in enumerate(bar, start=1):
            if self.dist is None:
                batch, loss_scale = item, None
            else:
                batch, loss_scale = item
            if loss_scale != 0:  # (an empty slice, a stand-in sentence weighted 0, counts nothing)
                n_src += int(batch.src_lengths.sum())  # counted on the CPU copy of the batch
                n_tgt += batch.n_tgt_tokens
            loss, nll = self.train_step(batch.to(self.device), loss_scale)
            total_loss, total_nll = total_loss + loss, total_nll + nll
            if number % DIVERGENCE_CHECK_EVERY == 0:  # (a sync: only now and then; all processes agree)
                seen = float(total_loss) if self.dist is None else self.dist.all_sum([total_loss])[0]
                if not math.isfinite(seen):
                    raise self._diverged(epoch, f"the training loss became {seen} at batch {number}")
            now = time.perf_counter()
            if self.cfg.print_every and number % self.cfg.print_every == 0 and n_tgt and (self.dist is None or self.dist.is_main):
                log.info("epoch %d, batch %d of %d: loss %.3f, ppl %.1f, %.0f tok/s", epoch, number, len(batches),
                         float(total_loss) / n_tgt, perplexity(-float(total_nll), n_tgt),
                         (n_src + n_tgt) * world / (now - start))
            if not bar.disable and now - shown >= 1.0 and n_tgt:  # (process 0's slices; tok_s: estimated for all)
                shown = now
                bar.set_postfix(loss=f"{float(total_loss) / n_tgt:.3f}", ppl=f"{perplexity(-float(total_nll), n_tgt):.1f}",
                                tok_s=f"{(n_src + n_tgt) * world / (now - start):.0f}", refresh=False)
        if self.dist is None:
            total_loss, total_nll = float(total_loss), float(total_nll)
        else:
            total_loss, total_nll, n_src, n_tgt = self.dist.all_sum([total_loss, total_nll, n_src, n_tgt])
            n_src, n_tgt = int(n_src), int(n_tgt)
        elapsed = time.perf_counter() - start
        record = {"train_loss": total_loss / n_tgt, "train_ppl": perplexity(-total_nll, n_tgt),
                  "src_tokens_per_s": n_src / elapsed, "tgt_tokens_per_s": n_tgt / elapsed, "epoch_time_s": elapsed}
        if self._align_weight:  # (process 0's share under torchrun)
            record.update(train_align_loss=float(self._align_sums[0]) / max(self._align_sums[1], 1),
                          align_weight=self._align_weight)
        return record

    def _slices(self, chunks: list[list[int]]) -> list[tuple[Batch, float]]:
        """This process's slice of each global batch, with the factor of its summed loss:
        world_size / sentences in the global batch (DDP's average over the processes then gives
        the whole batch's gradient, as one process computes it). A global batch of fewer sentences
        than processes leaves some slices empty: they run its first sentence, with a factor of 0."""
        rank, world = self.dist.rank, self.dist.world_size
        out = []
        for chunk in chunks:
            part = shard(chunk, rank, world)
            out.append((self.train_data.make_batch(part or chunk[:1]), world / len(chunk) if part else 0.0))
        return out

    def _forward(self, src, src_lengths, tgt_in, positions) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The training forward: logits at ``positions``, and the attention (batch, tgt_len, src_len)."""
        if TeacherForcing.supports(self.device, self.cfg.scheduled_sampling):  # (the CPU engine: same gradients)
            return self.teacher_forcing.forward(self.model, src, src_lengths, tgt_in, positions)
        return self.model(src, src_lengths, tgt_in, self.cfg.scheduled_sampling, only=positions)

    def train_step(self, batch: Batch, loss_scale: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One update; returns the batch's summed loss and NLL as (detached) device scalars.
        ``loss_scale`` (under torchrun): the factor of the summed loss (see ``_slices``); None: one
        process, the loss divided by the batch's sentences."""
        positions = output_positions(batch.tgt_out != PAD_ID, self.row_multiple)
        forward = self._forward if self._ddp is None else self._ddp  # (DDP: its forward arms the gradient all-reduce)
        with self._autocast():
            logits, attention = forward(batch.src, batch.src_lengths, batch.tgt_in, positions)
        # (sequence_loss drops the padding targets of the rounding rows, which come last)
        loss, nll = sequence_loss(logits, batch.tgt_out.flatten()[positions], self.cfg.label_smoothing)
        total = loss
        if self._align_weight:  # guided alignment (nmt.training.guidance): L = CE + w_e G
            guide, rows = alignment_loss(attention, self.train_links, batch)
            total = loss + self._align_weight * guide
            self._align_sums[0], self._align_sums[1] = self._align_sums[0] + guide.detach(), self._align_sums[1] + rows
        self.optimizer.zero_grad(set_to_none=True)
        if loss_scale is None:
            (total / batch.src.size(0)).backward()
        else:
            (total * loss_scale).backward()
            if loss_scale == 0:
                loss, nll = loss * 0, nll * 0
        step_with_clipping(self.optimizer, list(self.model.parameters()), self.cfg.max_grad_norm)
        if self.masks:
            apply_masks(self.model, self.masks)
        return loss.detach(), nll.detach()

    @torch.inference_mode()
    def validate(self) -> dict:
        self.model.eval()
        total, tokens = 0.0, 0
        aligned = AlignmentScore() if self.valid_links is not None else None
        for batch in self.valid_data.batches(64, shuffle=False):
            batch = batch.to(self.device)
            with self._autocast():
                logits, attention = self.model(batch.src, batch.src_lengths, batch.tgt_in)
            total -= float(sequence_loss(logits, batch.tgt_out, 0.0)[1])
            tokens += batch.n_tgt_tokens
            if aligned is not None:
                aligned.add(attention, self.valid_links, batch)
        n = self.cfg.valid_bleu_sents or len(self.valid_src_tok)
        hyps = self._validation_search().search_ids(self.valid_ids[:n], DecodeConfig(beam_size=1, batch_size=64))
        detok = get_tokenizer(self.data_cfg.tgt_lang).detokenize
        texts = [detok(self.tgt_vocab.decode(h[0].tokens)) if h else "" for h in hyps]
        bleu = corpus_scores(texts, self.valid_raw_tgt[:n]).bleu
        self.model.train()
        return {"valid_ppl": perplexity(total, tokens), "valid_bleu": bleu, **(aligned.result() if aligned else {})}

    def _validation_search(self) -> SearchEngine:
        """Made once for the model (it keeps a CPU trace, or on a GPU the search's CUDA graphs,
        from one validation to the next: the same shapes, and they read the weights where they lie)."""
        if self._valid_engines is None or self._valid_engines.model is not self.model:
            self._valid_engines = Engines(self.model, self.device)
        return self._valid_engines.get(EngineConfig(int8=False, inter_threads=1))  # (fp32, no thread pool in training)

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
        if self._pruning is not None:
            extra["pruning"] = self._pruning
        if self._decode is not None:  # (not its lexicon file, which this folder does not hold)
            extra["decode"] = self._decode
        return Checkpoint(self.model, self.src_vocab, self.tgt_vocab, self.data_cfg.src_lang, self.data_cfg.tgt_lang, extra,
                          chars=self.chars, features=self.features)

    def _write_model(self, folder: Path, metrics: Path | None = None) -> None:
        """A model folder of the current weights (with a pruned model's masks and the tracked sentences)."""
        write_model_files(folder, self._checkpoint(), metrics=metrics)
        if metrics is not None and (self.save_dir / TRACKED_FILE).is_file():
            shutil.copyfile(self.save_dir / TRACKED_FILE, folder / TRACKED_FILE)
        if self.masks:
            save_file({k: m.cpu() for k, m in self.masks.items()}, str(folder / MASKS_FILE))

    def _track(self, state: TrainerState, epoch: int) -> None:
        """``--track-sentences``: this epoch's greedy translations and attention of the tracked sentences,
        appended to ``tracked.jsonl`` (``nmt.training.tracking``)."""
        if self._tracked_ids is None:
            self._tracked_ids = tracked_sentences(self.cfg, self.valid_src_tok, self.valid_ids, self.data_cfg,
                                                  self.src_vocab_inputs)
        tokens, ids = self._tracked_ids
        if not tokens:
            return
        hyps = self._validation_search().search_ids(ids, DecodeConfig(beam_size=1, batch_size=64))
        outputs = [h[0].tokens if h else [] for h in hyps]
        attention = forced_attention(self.model, ids, outputs, self.device)
        state.tracked = (state.tracked or []) + [epoch_record(epoch, tokens, outputs, attention, self.tgt_vocab)]
        write_tracked(state.tracked, self.save_dir / TRACKED_FILE)

    def _keep_epoch(self, epoch: int, metrics: Path) -> None:
        """``--keep-checkpoints N``: ``epoch-K/`` model folders of every ``--save-every``th epoch, the last N."""
        n, every = self.cfg.keep_checkpoints, self.cfg.save_every
        if not n or epoch % every:
            return
        with atomic_dir(self.save_dir / f"epoch-{epoch}") as tmp:
            self._write_model(tmp, metrics)
        for old in self.save_dir.glob("epoch-*"):
            number = old.name.removeprefix("epoch-")
            if number.isdigit() and int(number) <= epoch - n * every and old.is_dir():
                shutil.rmtree(old)

    def _pretrained_vectors(self) -> None:
        """seq2seq-attn's pre_word_vecs_enc/dec and fix_word_vecs_enc/dec (``nmt.training.pretrained``)."""
        for side, path, fix, vocab, layer in (
                ("source", self.cfg.pre_word_vecs_enc, self.cfg.fix_word_vecs_enc, self.src_vocab, self.model.encoder.embeddings),
                ("target", self.cfg.pre_word_vecs_dec, self.cfg.fix_word_vecs_dec, self.tgt_vocab, self.model.decoder.embeddings)):
            if not path and not fix:
                continue
            table = getattr(layer, "weight", None)
            if table is None:
                raise ValueError(f"--pre-word-vecs/--fix-word-vecs need a word embedding table on the {side} side "
                                 "(not character inputs)")
            if path:
                apply_vectors(table, path, vocab, fix, side)
        self._freeze_fixed_vectors()

    def _freeze_fixed_vectors(self) -> None:
        """``--fix-word-vecs-enc/dec``: the tables get no gradient (a resumed run too)."""
        for fix, layer in ((self.cfg.fix_word_vecs_enc, self.model.encoder.embeddings),
                           (self.cfg.fix_word_vecs_dec, self.model.decoder.embeddings)):
            if fix:
                layer.weight.requires_grad_(False)

    @staticmethod
    def _rng_state() -> dict:
        state = {"torch": torch.get_rng_state(), "python": random.getstate()}
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state()
        return state

    def _save_last(self, state: TrainerState, ranks_rng: list[dict] | None = None) -> None:
        """``last/``; ``ranks_rng``: every process's RNG state (under torchrun), saved by rank."""
        tensors, meta = optimizer_to_safetensors(self.optimizer)
        own = self._rng_state()
        rng = {k: v for k, v in own.items() if k != "python"}
        py = own["python"]
        extra = {}
        if ranks_rng is not None:
            for r, saved in enumerate(ranks_rng[1:], start=1):
                rng.update({f"{k}.{r}": v for k, v in saved.items() if k != "python"})
            extra["python_rng_by_rank"] = [[p[0], list(p[1]), p[2]] for p in [py] + [s["python"] for s in ranks_rng[1:]]]
        with atomic_dir(self.save_dir / "last") as tmp:
            self._write_model(tmp)
            save_file(tensors, str(tmp / OPTIMIZER_FILE))
            save_file(rng, str(tmp / RNG_FILE))
            (tmp / STATE_FILE).write_text(json.dumps({"trainer": state.__dict__, "optimizer": meta,
                                                      "python_rng": [py[0], list(py[1]), py[2]], **extra}))

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
            set_learning_rate(self.optimizer, state.lr)
            log.info("learning rate decayed to %g", state.lr)
        state.prev_valid_ppl = valid_ppl

    # ---- the loop ----------------------------------------------------------------------
    def run(self) -> Path:
        if self.dist is None:
            return self._run()
        if not self.dist.is_main:  # (process 0 speaks for all; the others only print errors)
            logging.getLogger("nmt").setLevel(logging.ERROR)
        run_dir = self.cfg.train_from or self.save_dir
        where = f"{run_dir}/last holds the last complete epoch, if any: continue with --train-from {run_dir}"
        self.dist.start(self.device, self.cfg.dist_timeout, stopped=where)
        try:
            with self.dist.lost_contact_is_an_error(where):
                return self._run()
        finally:
            self.dist.close()

    def _run(self) -> Path:
        state = self._setup()
        log.info("model: %d parameters on %s%s", self.model.num_parameters(), self.device, " (bf16 autocast)" if self.amp else "")
        if self.dist is not None:
            self._agree(state)
            self._ddp = self.dist.wrap(_TrainingForward(self.model, self._forward))
            log.info("data parallel over %d processes: %s sentences a batch in all (about %d a process); "
                     "process 0 validates and writes %s", self.dist.world_size, self.data_cfg.batch_size,
                     -(-self.data_cfg.batch_size // self.dist.world_size), self.save_dir)
        self._on_main(lambda: self._prepare_save_dir(state))
        for epoch in range(state.epoch + 1, self.cfg.epochs + 1):
            lr = state.lr
            train = self.train_epoch(epoch)
            ranks_rng = self.dist.all_gather(self._rng_state()) if self.dist is not None else None
            self._on_main(lambda: self._end_epoch(state, epoch, lr, train, ranks_rng))
            if self.dist is not None:  # process 0's decisions: learning rate, best epoch, history
                for key, value in self.dist.broadcast(dataclasses.asdict(state)).items():
                    setattr(state, key, value)
                set_learning_rate(self.optimizer, state.lr)
                self._epoch = state.epoch
        best = resolve_dir(self.save_dir / "best")

        def finish() -> None:
            if best.exists():  # best/ was written at its epoch: give it the whole curve, and the int8 record
                self._write_metrics(state.history, best)
                self._record_int8(best)

        self._on_main(finish)  # (under torchrun every process returns once process 0 has written everything)
        return best

    def _record_int8(self, best: Path) -> None:
        """Write into ``best/config.json`` the validation BLEU of fp32 and int8 search with the best
        weights (beam 5, on the CPU), which makes int8 the default engine on a CPU if it keeps that
        BLEU (``nmt.engines.int8``)."""
        model = load_checkpoint(best, "cpu", max_parameters=math.inf).model
        engines, n = Engines(model, torch.device("cpu")), min(len(self.valid_ids), INT8_RECORD_SENTENCES)
        detok = get_tokenizer(self.data_cfg.tgt_lang).detokenize
        bleu = {}
        for name, int8 in (("fp32", False), ("int8", True)):
            engine = engines.get(EngineConfig(int8=int8, inter_threads=1, trace=False))  # (no pool, no TorchScript)
            hyps = engine.search_ids(self.valid_ids[:n], DecodeConfig(beam_size=5))
            texts = [detok(self.tgt_vocab.decode(h[0].tokens)) if h else "" for h in hyps]
            bleu[name] = round(corpus_scores(texts, self.valid_raw_tgt[:n]).bleu, 2)
        record = {"valid_bleu_fp32": bleu["fp32"], "valid_bleu_int8": bleu["int8"], "sentences": n,
                  "max_bleu_loss": INT8_MAX_BLEU_LOSS}
        config = json.loads((best / CONFIG).read_text(encoding="utf-8"))
        with atomic_output(best / CONFIG, "config") as fh:
            fh.write(json.dumps({**config, "int8": record}, indent=2) + "\n")
        log.info("validation BLEU with beam 5: fp32 %.2f, int8 %.2f (%s by default on a CPU)", bleu["fp32"], bleu["int8"],
                 "int8" if int8_keeps_quality(record) else "fp32")

    def _prepare_save_dir(self, state: TrainerState) -> None:
        try:
            self.save_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CheckpointError(f"cannot create the save dir {self.save_dir} ({exc.strerror or exc})") from None
        for leftover in remove_leftovers(self.save_dir):
            log.info("removed %s, left by an interrupted checkpoint write", leftover)
        self._repair_best(state)

    def _end_epoch(self, state: TrainerState, epoch: int, lr: float, train: dict, ranks_rng: list | None) -> None:
        """Validate, decide (divergence, learning rate, best epoch) and write the checkpoints."""
        record = {"epoch": epoch, "lr": lr, **train, **self.validate()}
        self._check_divergence(epoch, record)
        self._track(state, epoch)
        self._decay(state, epoch, record["valid_ppl"])
        score = record["valid_bleu"] if self.cfg.select_by == "bleu" else -record["valid_ppl"]
        improved = state.best_score is None or score > state.best_score
        if improved:
            state.best_score, state.best_epoch = score, epoch
        state.epoch = self._epoch = epoch
        state.history.append(record)
        self._save_last(state, ranks_rng)
        metrics = self._write_metrics(state.history, self.save_dir)
        if improved:
            with atomic_dir(self.save_dir / "best") as tmp:
                self._write_model(tmp, metrics)
        self._keep_epoch(epoch, metrics)
        log.info("epoch %d: train ppl %.2f, valid ppl %.2f, valid BLEU %.2f, %.0f tok/s%s", epoch,
                 record["train_ppl"], record["valid_ppl"], record["valid_bleu"],
                 record["src_tokens_per_s"] + record["tgt_tokens_per_s"], " (best)" if improved else "")

    def _on_main(self, work: Callable[[], None]) -> None:
        """``work()`` on process 0 alone while the others wait (a single process: just ``work()``).
        An error there stops every process, with process 0's message."""
        if self.dist is None:
            work()
            return
        error = None
        if self.dist.is_main:
            try:
                work()
            except Exception as exc:  # (re-raised below, once the others know)
                error = exc
        told = self.dist.broadcast(None if error is None else (type(error).__name__, str(error)))
        if error is not None:
            raise error
        if told is not None:  # (every process stops with process 0's message)
            kind, message = told
            if kind == TrainingDiverged.__name__:
                raise TrainingDiverged(message)
            raise DistributedError(f"process 0 stopped ({kind}): {message}")

    def _agree(self, state: TrainerState) -> None:
        """Refuse to train if the processes differ in settings, data or resumed epoch (each would
        make other batches: a silent mess)."""
        mine = {"data": to_dict(self.data_cfg), "vocab": to_dict(self.vocab_cfg), "model": to_dict(self.model_cfg),
                "train": {k: v for k, v in to_dict(self.cfg).items() if k not in ("device", "threads", "dist_timeout")},
                "pairs": len(self.train_data), "vocabularies": [len(self.src_vocab), len(self.tgt_vocab)],
                "epoch": state.epoch}
        everyone = self.dist.all_gather(mine)
        for rank, theirs in enumerate(everyone):
            if theirs != everyone[0]:
                differ = sorted(k for k in mine if theirs[k] != everyone[0][k])
                raise ValueError(f"process {rank} differs from process 0 in {', '.join(differ)}: start every process "
                                 "with the same command, data files and save dir (for --train-from, a folder every "
                                 "machine sees)")


class _TrainingForward(torch.nn.Module):
    """The training forward as one module for DDP, whose forward arms the all-reduce of the
    gradients; it holds the model (so DDP sees its parameters) and calls the trainer's forward,
    the CPU teacher-forcing engine included (its gradients reach the parameters as autograd's do)."""

    def __init__(self, model: Seq2Seq, forward: Callable[..., tuple]):
        super().__init__()
        self.model = model
        self._forward = forward

    def forward(self, src, src_lengths, tgt_in, positions):
        return self._forward(src, src_lengths, tgt_in, positions)
