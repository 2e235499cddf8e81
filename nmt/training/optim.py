"""Optimizers, gradient clipping, and optimizer state in safetensors."""

from __future__ import annotations

import torch


def make_optimizer(name: str, params, lr: float) -> torch.optim.Optimizer:
    optimizers = {"sgd": torch.optim.SGD, "adagrad": torch.optim.Adagrad,
                  "adadelta": torch.optim.Adadelta, "adam": torch.optim.Adam}
    if name not in optimizers:
        raise ValueError(f"unknown optimizer {name!r}; choose from {sorted(optimizers)}")
    kwargs = {"foreach": True} if name != "adam" else {"fused": True}
    optimizer = optimizers[name](params, lr=lr, **kwargs)
    set_learning_rate(optimizer, lr)
    return optimizer


def parameter_groups(model: torch.nn.Module, layer_lrs: str, lr: float) -> list:
    """The optimizer's parameter groups: one, or with ``layer_lrs`` ("enc,dec,out", seq2seq-attn's
    -layer_lrs) the encoder (with the bridge), the decoder and the output layer, each with its learning
    rate as a factor of ``lr`` (``set_learning_rate`` keeps the factors through decay and resumption)."""
    if not layer_lrs:
        return [{"params": list(model.parameters()), "lr_factor": 1.0}]
    try:
        rates = [float(x) for x in layer_lrs.split(",")]
    except ValueError:
        rates = []
    if len(rates) != 3 or not all(0 < r < float("inf") for r in rates):
        raise ValueError(f"--layer-lrs takes three positive learning rates, encoder,decoder,output (got {layer_lrs!r})")
    decoder, output = list(model.decoder.parameters()), list(model.generator.parameters())
    later = {id(p) for p in decoder + output}
    encoder = [p for p in model.parameters() if id(p) not in later]
    return [{"params": ps, "lr": r, "lr_factor": r / lr} for ps, r in zip((encoder, decoder, output), rates)]


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Every group's learning rate: ``lr`` times the group's factor (``parameter_groups``)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_factor", 1.0)


def grad_norm(params: list[torch.Tensor]) -> torch.Tensor:
    """The total norm of the gradients. On a CPU the squared norms are BLAS dot products, which
    read a large gradient about twice as fast as ``torch.linalg.vector_norm``."""
    grads = [p.grad for p in params if p.grad is not None]
    if grads and grads[0].device.type == "cpu":
        return torch.stack([torch.dot(g.reshape(-1), g.reshape(-1)) for g in grads]).sum().sqrt()
    return torch.nn.utils.get_total_norm(grads)


def clip_grad_norm(params: list[torch.Tensor], max_norm: float) -> torch.Tensor:
    """Rescale the gradients to a total norm of at most ``max_norm``; returns the norm before.
    On a CPU the rescaling pass is skipped when the norm is already within bounds (reading the
    norm costs nothing there; on a GPU it would be a host-device sync, so it always rescales)."""
    total = grad_norm(params)
    if total.device.type != "cpu" or not float(total) <= max_norm:  # (also NaN / inf)
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)
    return total


def step_with_clipping(optimizer: torch.optim.Optimizer, params: list[torch.Tensor], max_norm: float) -> None:
    """``optimizer.step()`` on the gradients rescaled to a total norm of at most ``max_norm``
    (no clipping if it is 0). On a CPU, an optimizer that can divide the gradients by a scale as
    it reads them (``step_dividing_gradients``) takes the rescaling inside its step, which saves
    a pass over the gradients."""
    if max_norm <= 0:
        optimizer.step()
        return
    params = [p for p in params if p.grad is not None]
    if not params or params[0].device.type != "cpu" or not divides_gradients(optimizer):
        clip_grad_norm(params, max_norm)
        optimizer.step()
        return
    total = grad_norm(params)
    if float(total) <= max_norm:
        optimizer.step()
    else:  # (also NaN / inf, as in clip_grad_norm)
        step_dividing_gradients(optimizer, total / max_norm)


def divides_gradients(optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``step_dividing_gradients`` works for ``optimizer`` (PyTorch's fused optimizers)."""
    return bool(getattr(optimizer, "_step_supports_amp_scaling", False))


def step_dividing_gradients(optimizer: torch.optim.Optimizer, scale: torch.Tensor) -> None:
    """``optimizer.step()`` as if every gradient had been divided by ``scale`` first.

    This is how AMP's GradScaler unscales gradients inside a fused optimizer's step, and it goes
    through private attributes: ``_step_supports_amp_scaling`` (see ``divides_gradients``) and
    ``grad_scale``/``found_inf`` set on the optimizer for one step. They are used here only;
    tests/test_model.py fails if PyTorch changes them."""
    optimizer.grad_scale, optimizer.found_inf = scale, torch.zeros(())
    try:
        optimizer.step()
    finally:
        del optimizer.grad_scale, optimizer.found_inf


def optimizer_to_safetensors(opt: torch.optim.Optimizer) -> tuple[dict, dict]:
    sd = opt.state_dict()
    tensors, meta = {}, {"param_groups": sd["param_groups"], "state": {}}
    for pid, entries in sd["state"].items():
        for key, value in entries.items():
            if torch.is_tensor(value):
                tensors[f"{pid}.{key}"] = value.detach().contiguous().cpu()
            else:
                meta["state"].setdefault(str(pid), {})[key] = value
    return tensors, meta


def optimizer_from_safetensors(tensors: dict, meta: dict) -> dict:
    state: dict = {}
    for name, value in tensors.items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    for pid, entries in meta["state"].items():
        state.setdefault(int(pid), {}).update(entries)
    return {"state": state, "param_groups": meta["param_groups"]}
