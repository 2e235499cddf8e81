"""The network: sizes, padding invariance, reversed sources, the fused loss."""

from __future__ import annotations

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from nmt.config import ModelConfig
from nmt.model.dropout import Dropout
from nmt.model.encoders import reverse_index
from nmt.model.seq2seq import Seq2Seq
from nmt.training.loss import output_positions, sequence_loss
from nmt.training.optim import clip_grad_norm, divides_gradients, make_optimizer, step_with_clipping


def test_reference_architecture_has_opennmt_parameter_count():
    """bi-LSTM 256, 1 layer, general attention, input feed, 256-d embeddings, Multi30k vocabularies:
    OpenNMT-py reports 6.63 M parameters for this model."""
    cfg = ModelConfig(src_vocab=8021, tgt_vocab=6221, emb_size=256, hidden=256, attention="general")
    assert Seq2Seq(cfg).num_parameters() == pytest.approx(6.63e6, rel=0.002)
    tied = ModelConfig(**{**cfg.__dict__, "tie_embeddings": True})
    assert Seq2Seq(cfg).num_parameters() - Seq2Seq(tied).num_parameters() == 6221 * 256


@pytest.mark.parametrize("attention", ["none", "dot", "general", "concat"])
@pytest.mark.parametrize("reverse_src", [False, True])
def test_padding_does_not_change_a_sentence(attention, reverse_src):
    torch.manual_seed(0)
    model = Seq2Seq(ModelConfig(src_vocab=20, tgt_vocab=20, emb_size=8, hidden=12, layers=2, attention=attention,
                                reverse_src=reverse_src, dropout=0.0, bridge=True)).eval()
    src = torch.tensor([[5, 6, 7, 8, 9], [5, 6, 7, 0, 0]])
    tgt = torch.tensor([[2, 10, 11], [2, 10, 11]])
    logits, attn = model(src, torch.tensor([5, 3]), tgt)
    alone, attn_alone = model(src[1:, :3], torch.tensor([3]), tgt[1:])
    assert torch.allclose(logits[1], alone[0], atol=1e-5)
    if attention != "none":
        assert torch.allclose(attn[1, :, :3], attn_alone[0], atol=1e-6)
        assert torch.all(attn[1, :, 3:] == 0)
    else:
        assert attn is None


@pytest.mark.parametrize("brnn", [False, True])
def test_unpadded_batches_skip_packing_with_the_same_results(brnn):
    """Without padding (one sentence, say) the encoder runs its LSTM on the plain batch."""
    torch.manual_seed(0)
    model = Seq2Seq(ModelConfig(src_vocab=20, tgt_vocab=20, emb_size=8, hidden=12, layers=2, brnn=brnn,
                                dropout=0.0)).eval()
    enc = model.encoder
    for src in (torch.tensor([[5, 6, 7, 8, 9]]), torch.tensor([[5, 6, 7], [9, 8, 4]])):
        lengths = torch.full((src.size(0),), src.size(1))
        packed = pack_padded_sequence(enc.embeddings(src), lengths, batch_first=True, enforce_sorted=False)
        out, (h, c) = enc.rnn(packed)
        if brnn:
            h, c = torch.cat([h[0::2], h[1::2]], dim=-1), torch.cat([c[0::2], c[1::2]], dim=-1)
        memory, (h2, c2) = enc(src, lengths)
        assert torch.equal(memory, pad_packed_sequence(out, batch_first=True)[0])  # bit for bit
        assert torch.equal(h, h2) and torch.equal(c, c2)


def test_reverse_src_reads_the_sentence_backwards_but_keeps_positions():
    idx = reverse_index(torch.tensor([3, 5]), 5)
    assert idx.tolist() == [[2, 1, 0, 3, 4], [4, 3, 2, 1, 0]]
    torch.manual_seed(0)
    cfg = dict(src_vocab=20, tgt_vocab=20, emb_size=8, hidden=8, brnn=False, dropout=0.0)
    fwd = Seq2Seq(ModelConfig(**cfg)).eval()
    rev = Seq2Seq(ModelConfig(**cfg, reverse_src=True)).eval()
    rev.load_state_dict(fwd.state_dict())
    src, lengths = torch.tensor([[5, 6, 7]]), torch.tensor([3])
    mem_rev, _ = rev.encoder(src, lengths)
    mem_fwd, _ = fwd.encoder(src.flip(1), lengths)
    assert torch.allclose(mem_rev, mem_fwd.flip(1), atol=1e-6)  # memory stays aligned with source positions


def test_bad_configs_are_refused():
    with pytest.raises(ValueError, match="attention"):
        Seq2Seq(ModelConfig(src_vocab=10, tgt_vocab=10, attention="luong"))
    with pytest.raises(ValueError, match="tie"):
        Seq2Seq(ModelConfig(src_vocab=10, tgt_vocab=10, emb_size=8, hidden=16, tie_embeddings=True))


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_fused_loss_matches_pytorch(smoothing):
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 11, requires_grad=True)
    target = torch.randint(1, 11, (3, 5))
    target[0, 3:] = 0  # padding
    loss, nll = sequence_loss(logits, target, smoothing)
    (grad,) = torch.autograd.grad(loss, logits)
    mask = target != 0
    ref = torch.nn.functional.cross_entropy(logits[mask], target[mask], label_smoothing=smoothing, reduction="sum")
    (ref_grad,) = torch.autograd.grad(ref, logits)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    assert nll.item() == pytest.approx(torch.nn.functional.cross_entropy(logits[mask], target[mask], reduction="sum").item(), rel=1e-5)
    assert torch.allclose(grad, ref_grad, atol=1e-6)


def test_loss_of_bf16_logits_is_within_bf16_rounding_of_fp32_and_returns_a_bf16_gradient():
    """Under --amp the output layer gives bf16 logits; the loss works on them in bf16 and sums in fp32."""
    torch.manual_seed(0)
    logits = (torch.randn(30, 50) * 4).bfloat16().requires_grad_()
    target = torch.randint(4, 50, (30,))
    loss, nll = sequence_loss(logits, target, 0.1)
    wide = logits.detach().float().requires_grad_()
    ref_loss, ref_nll = sequence_loss(wide, target, 0.1)
    assert loss.dtype == nll.dtype == torch.float32
    assert loss.item() == pytest.approx(ref_loss.item(), rel=4e-3)  # bf16 keeps 8 significant bits
    assert nll.item() == pytest.approx(ref_nll.item(), rel=4e-3)
    loss.backward()
    ref_loss.backward()
    assert logits.grad.dtype == torch.bfloat16
    assert torch.allclose(logits.grad.float(), wide.grad, atol=1e-2)


def test_output_positions_put_real_tokens_first_and_round_the_count_with_padding():
    mask = torch.tensor([[True, True, True, False], [True, False, False, False]])
    assert output_positions(mask).tolist() == [0, 1, 2, 4]
    rounded = output_positions(mask, 3)
    assert rounded.tolist()[:4] == [0, 1, 2, 4] and len(rounded) == 6
    assert not mask.flatten()[rounded[4:]].any()  # the extra rows are padding positions
    assert len(output_positions(mask, 64)) == 8  # no more rows than there are positions


def test_loss_ignores_the_rows_that_only_round_the_shape():
    """Training under --amp on a CPU rounds the output layer's row count (output_positions):
    the extra rows change neither the loss nor the real rows' gradient, and get none."""
    torch.manual_seed(0)
    logits = torch.randn(7, 13, requires_grad=True)
    target = torch.randint(4, 13, (5,))
    loss, nll = sequence_loss(logits, target, 0.1)
    loss.backward()
    real = logits.detach()[:5].clone().requires_grad_()
    ref_loss, ref_nll = sequence_loss(real, target, 0.1)
    ref_loss.backward()
    assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-6) and nll.item() == pytest.approx(ref_nll.item(), rel=1e-6)
    assert torch.equal(logits.grad[:5], real.grad)
    assert not logits.grad[5:].any()


def test_dropout_zeroes_a_fraction_p_and_rescales_the_rest():
    torch.manual_seed(0)
    drop = Dropout(0.3).train()
    x = torch.ones(200, 500, requires_grad=True)
    y = drop(x)
    kept = y != 0
    assert (1 - kept.float().mean().item()) == pytest.approx(0.3, abs=0.01)
    assert torch.allclose(y[kept], torch.full_like(y[kept], 1 / 0.7))
    y.sum().backward()
    assert torch.equal(x.grad, y.detach())  # the gradient goes through the same mask
    assert torch.equal(drop.eval()(x), x)
    with pytest.raises(ValueError, match="dropout"):
        Dropout(1.0)


@pytest.mark.parametrize("scale", [1e-3, 1.0, 100.0])
def test_gradient_clipping_matches_pytorch(scale):
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(5, 7)) for _ in range(3)]
    for p in params:
        p.grad = torch.randn_like(p) * scale
    ref = [p.grad.clone() for p in params]
    ref_params = [torch.nn.Parameter(p.detach().clone()) for p in params]
    for p, g in zip(ref_params, ref):
        p.grad = g
    expected = torch.nn.utils.clip_grad_norm_(ref_params, 5.0)
    assert clip_grad_norm(params, 5.0).item() == pytest.approx(expected.item())
    for p, q in zip(params, ref_params):
        assert torch.allclose(p.grad, q.grad)


@pytest.mark.parametrize("scale", [1e-3, 100.0])
@pytest.mark.parametrize("optim", ["adam", "sgd"])
def test_clipping_inside_the_optimizer_step_equals_clipping_then_stepping(scale, optim):
    """Fused Adam takes the clipping as its gradient scale (through PyTorch's private attributes,
    used by nmt.training.optim.step_dividing_gradients only); other optimizers clip first."""
    torch.manual_seed(0)
    ours = [torch.nn.Parameter(torch.randn(5, 7)) for _ in range(3)]
    ref = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    opt = make_optimizer(optim, ours, 0.01)
    assert divides_gradients(opt) == (optim == "adam")  # fails if PyTorch renames the attribute
    ref_opt = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD}[optim](ref, lr=0.01)
    for _ in range(3):
        for p, q in zip(ours, ref):
            p.grad = torch.randn_like(p) * scale
            q.grad = p.grad.clone()
        step_with_clipping(opt, ours, 5.0)
        torch.nn.utils.clip_grad_norm_(ref, 5.0)
        ref_opt.step()
        for p, q in zip(ours, ref):
            assert torch.allclose(p, q, atol=1e-6)
    assert not hasattr(opt, "grad_scale")
