"""The CPU training engine (nmt.engines.teacher_forcing: gradients summed over the decoder's steps
once per batch, and a fused step) against plain autograd through the model's own steps."""

from __future__ import annotations

import pytest
import torch

import nmt.engines.teacher_forcing as sg
from nmt.config import ModelConfig
from nmt.model.seq2seq import Seq2Seq

SRC = torch.tensor([[5, 6, 7, 8, 9, 10], [5, 6, 7, 0, 0, 0], [11, 12, 13, 14, 0, 0]])
LENGTHS = torch.tensor([6, 3, 4])
TGT_IN = torch.tensor([[2, 10, 11, 12, 13], [2, 14, 15, 0, 0], [2, 16, 17, 18, 0]])


def _model(attention: str, layers: int, input_feed: bool, brnn: bool, dropout: float = 0.3) -> Seq2Seq:
    torch.manual_seed(0)
    cfg = ModelConfig(src_vocab=20, tgt_vocab=22, emb_size=8, hidden=12, layers=layers, attention=attention,
                      input_feed=input_feed, brnn=brnn, dropout=dropout)
    return Seq2Seq(cfg).train()


def _run(model: Seq2Seq, summed: bool, amp: bool = False, passes: int = 1, fuse: bool = True):
    """Outputs and parameter gradients of a loss on both the logits and the attention, through the
    engine (``summed``) or the model's own forward."""
    model.zero_grad(set_to_none=True)
    torch.manual_seed(1)  # the same dropout masks on both paths
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        if summed:
            logits, attn = sg.TeacherForcing(fuse).forward(model, SRC, LENGTHS, TGT_IN)
        else:
            logits, attn = model(SRC, LENGTHS, TGT_IN)
    loss = logits.float().pow(2).mean()
    if attn is not None:
        loss = loss + attn.float().pow(2).sum()
    for i in range(passes):
        loss.backward(retain_graph=i + 1 < passes)
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return logits.detach().float(), attn, grads


@pytest.mark.parametrize("attention", ["general", "dot", "concat", "none"])
@pytest.mark.parametrize("layers,input_feed,brnn", [(1, True, True), (2, True, False), (2, False, True)])
def test_summed_gradients_equal_autograds_step_by_step(attention, layers, input_feed, brnn):
    model = _model(attention, layers, input_feed, brnn)
    logits, attn, grads = _run(model, summed=True)
    ref_logits, ref_attn, ref_grads = _run(model, summed=False)
    assert torch.allclose(logits, ref_logits, atol=1e-6)
    if attention != "none":
        assert torch.allclose(attn, ref_attn, atol=1e-6)
    assert grads.keys() == ref_grads.keys()
    for name, grad in grads.items():
        assert torch.allclose(grad, ref_grads[name], rtol=1e-4, atol=1e-7), name


def test_a_graph_run_twice_accumulates_twice():
    model = _model("general", 1, True, True)
    _, _, once = _run(model, summed=True)
    _, _, twice = _run(model, summed=True, passes=2)
    for name, grad in once.items():
        assert torch.allclose(twice[name], 2 * grad, rtol=1e-5, atol=1e-7), name


def test_under_bf16_autocast_the_gradients_stay_close_to_full_precision():
    """The attention runs in fp32: every parameter's gradient is within 3 % of full precision
    (plain autocast is off 27-fold here on the attention's input layer, whose gradient is tiny
    at initialisation)."""
    model = _model("general", 2, True, True, dropout=0.0)
    _, _, ref = _run(model, summed=False)
    _, _, grads = _run(model, summed=True, amp=True)
    for name, grad in grads.items():
        assert (grad - ref[name]).norm() <= 0.03 * ref[name].norm(), name


def test_the_model_runs_its_own_modules_and_the_engine_its_own():
    model = _model("general", 1, True, True)
    calls = []
    model.decoder.cells[0].register_forward_hook(lambda *_: calls.append(1))
    model(SRC, LENGTHS, TGT_IN)  # training mode, on a CPU: the plain model still
    assert len(calls) == TGT_IN.size(1)  # nn.LSTMCell ran at every step
    sg.TeacherForcing().forward(model, SRC, LENGTHS, TGT_IN)
    assert len(calls) == TGT_IN.size(1)  # not through the engine
    assert sg.TeacherForcing.supports(torch.device("cpu"), 0.0)
    assert not sg.TeacherForcing.supports(torch.device("cpu"), 0.1)  # scheduled sampling: the plain model
    assert not sg.TeacherForcing.supports(torch.device("cuda"), 0.0)


def test_nothing_of_a_batch_outlives_its_step(monkeypatch):
    """The per-batch weights and source tensors are freed with the batch's graph, by reference
    counting alone (a reference cycle through the graph once leaked 3 MB a batch)."""
    import gc
    import weakref

    made = []
    original = sg._SharedBySteps

    def recording(*args):
        shared = original(*args)
        made.extend(weakref.ref(t) for t in (shared.cells[0].weight, shared.source.keys, shared.source.memory))
        return shared

    monkeypatch.setattr(sg, "_SharedBySteps", recording)
    model = _model("general", 1, True, True)
    gc.disable()
    try:
        _run(model, summed=True)
        assert len(made) == 3 and all(ref() is None for ref in made)
    finally:
        gc.enable()


@pytest.mark.parametrize("attention", ["general", "dot"])
def test_one_layer_decoders_with_input_feeding_take_the_fused_step(attention, monkeypatch):
    """Their whole step is one autograd node (nmt.engines.teacher_forcing.FusedStep); the grid above
    checks its outputs and gradients against autograd's."""
    calls = []
    apply = sg._FusedStep.apply
    monkeypatch.setattr(sg._FusedStep, "apply", lambda *args: calls.append(1) or apply(*args))
    _run(_model(attention, 1, True, True), summed=True)
    assert len(calls) == TGT_IN.size(1)
    calls.clear()
    _run(_model(attention, 2, True, True), summed=True)  # two layers: the step's own modules
    assert not calls


def test_the_fused_step_under_bf16_autocast_is_as_close_to_full_precision_as_the_unfused():
    model = _model("general", 1, True, True, dropout=0.0)
    _, _, ref = _run(model, summed=False)
    logits, _, fused = _run(model, summed=True, amp=True)
    unfused_logits, _, plain = _run(model, summed=True, amp=True, fuse=False)
    assert torch.equal(logits, unfused_logits)  # the same forward computation
    for name, grad in fused.items():
        deviation, unfused_deviation = ((g - ref[name]).norm() / ref[name].norm() for g in (grad, plain[name]))
        assert deviation <= 1.2 * unfused_deviation + 1e-3, name
