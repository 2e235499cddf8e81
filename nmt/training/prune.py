"""Magnitude pruning (See et al. 2016, "Compression of Neural Machine Translation Models via Pruning";
seq2seq-attn's ``prune.lua``).

Weight classes (Sec. 3.1): the source embeddings, the target embeddings, each encoder layer (both
directions of a bi-LSTM together), each decoder layer, the attention (its scores and the attentional
hidden layer W_c) and the output layer (``generator``); any other module (bridge, character CNN,
source features, a second attention) is a class of its own. With tied embeddings the one tensor is
the target embeddings (``model.named_parameters()`` lists it once) and is pruned once.

Schemes (Sec. 3.2): *class-blind* prunes the ``ratio`` of all parameters with the smallest
magnitude, wherever they are; *class-uniform* prunes the ``ratio`` smallest within each class.
Exactly ``round(ratio * n)`` entries are pruned (ties broken arbitrarily), not "all under a
threshold", so the ratio holds even where many weights are equal (an embedding's padding row is 0).

Biases are pruned too: the paper prunes every parameter, its layers' biases being part of their
affine maps T (Sec. 3.1), and they are few enough that it hardly matters either way.

Masks (True: kept) are stored as ``masks.safetensors``, one BOOL tensor per parameter name of
``model.named_parameters()``. Retraining (Sec. 3.3) keeps the pruned weights at zero by calling
:func:`apply_masks` after every optimizer step.
"""

from __future__ import annotations

import math
import re
import struct
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from torch import nn

from nmt.checkpoint import MAX_HEADER_BYTES
from nmt.errors import CheckpointError
from nmt.hub import MASKS_FILE
from nmt.safe_io import checkpoint_file
from nmt.training.average import check_output_folder, load_local, save_derived, without_stale

METHODS = ("blind", "uniform")
MASK_DTYPES = ("BOOL", "U8")
# (pattern, class) by parameter name, the first match wins; a name matching none is classed by its module.
CLASS_RULES = (
    (r"encoder\.rnn\.\w+_l(\d+)(_reverse)?", "encoder.layer{}"),  # nn.LSTM: weight_ih_l0, ..._l0_reverse
    (r"encoder\.layers_rnn\.(\d+)\..*", "encoder.layer{}"),  # one nn.LSTM per layer (res_net)
    (r"decoder\.cells\.(\d+)\..*", "decoder.layer{}"),
    (r"decoder\.attention\..*", "attention"),
    (r"generator\..*", "generator"),
    (r"encoder\.embeddings\.(?:words\.)?embedding\..*", "src_embeddings"),
    (r"decoder\.embeddings\.embedding\..*", "tgt_embeddings"),
    (r"encoder\.embeddings\.features\..*", "src_features"),
    (r"encoder\.embeddings\.words\..*", "src_char_cnn"),
    (r"decoder\.embeddings\.cnn\..*", "tgt_char_cnn"),
)


def weight_class(name: str) -> str:
    """The class of the parameter ``name``; otherwise its module's first two names (``bridge.0`` -> ``bridge``)."""
    for pattern, cls in CLASS_RULES:
        match = re.fullmatch(pattern, name)
        if match:
            return cls.format(*match.groups()[:1])
    parts = name.split(".")[:-1][:2]
    return ".".join(p for p in parts if not p.isdigit()) or name


def weight_classes(model: nn.Module) -> dict[str, list[str]]:
    """Class -> the names of its parameters (each tensor once: a tied output layer is the target embeddings)."""
    classes: dict[str, list[str]] = {}
    for name, _ in model.named_parameters():
        classes.setdefault(weight_class(name), []).append(name)
    return classes


def check_pruning(ratio: float, method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"unknown pruning method {method!r}: choose 'blind' or 'uniform'")
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 <= ratio < 1:
        raise ValueError(f"the pruning ratio must be in [0, 1) (got {ratio!r})")


def prune_model(model: nn.Module, ratio: float, method: str = "blind") -> dict[str, torch.Tensor]:
    """Set the smallest-magnitude ``ratio`` of the weights to 0, class-blind (over the whole model) or
    class-uniform (within each class); in place. Returns name -> mask (bool, the parameter's shape, True: kept)."""
    check_pruning(ratio, method)
    params = dict(model.named_parameters())
    groups = [list(params)] if method == "blind" else list(weight_classes(model).values())
    masks: dict[str, torch.Tensor] = {}
    for names in groups:
        masks.update(smallest_pruned({name: params[name] for name in names}, ratio))
    apply_masks(model, masks)
    return masks


def smallest_pruned(tensors: dict[str, torch.Tensor], ratio: float) -> dict[str, torch.Tensor]:
    """Masks dropping the ``round(ratio * n)`` smallest |w| of these ``n`` weights taken together."""
    flat = torch.cat([t.detach().abs().flatten() for t in tensors.values()])  # (n,)
    keep = torch.ones(flat.shape, dtype=torch.bool, device=flat.device)
    k = round(ratio * flat.numel())
    if k:
        keep[torch.topk(flat, k, largest=False, sorted=False).indices] = False
    masks, start = {}, 0
    for name, t in tensors.items():
        masks[name] = keep[start:start + t.numel()].view(t.shape).clone()  # (own storage: saved on its own)
        start += t.numel()
    return masks


@torch.no_grad()
def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """weight *= mask, in place: call after each optimizer step of retraining so that pruned weights stay 0
    (an optimizer's momentum would otherwise regrow them). Move the masks to the model's device once first."""
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        params[name].mul_(mask.to(params[name].device))


def pruned_fractions(model: nn.Module, masks: dict[str, torch.Tensor]) -> dict[str, float]:
    """Class -> the fraction of its weights that the masks prune."""
    fractions = {}
    for cls, names in weight_classes(model).items():
        total = sum(masks[n].numel() for n in names if n in masks)
        pruned = sum(int((~masks[n]).sum()) for n in names if n in masks)
        fractions[cls] = round(pruned / total, 6) if total else 0.0
    return fractions


def sparse_size_bytes(model: nn.Module, masks: dict[str, torch.Tensor]) -> int:
    """The weights' size stored sparsely as a bitmask + the kept values in fp16: per masked tensor of n
    entries, ceil(n / 8) bytes of mask and 2 bytes per kept value; an unmasked tensor is dense fp16.
    (CSR with int32 column indices, 6 bytes per kept value, only beats dense fp16 above 2/3 pruned.)"""
    size = 0
    for name, p in model.named_parameters():
        mask = masks.get(name)
        size += 2 * p.numel() if mask is None else math.ceil(p.numel() / 8) + 2 * int(mask.sum())
    return size


def dense_size_bytes(model: nn.Module) -> int:
    """The weights' size in fp16, each tensor once."""
    return 2 * sum(p.numel() for p in model.parameters())


def max_masks_bytes(n_parameters: int) -> int:
    """The largest masks file of a model of so many parameters: one byte an entry, after a capped header."""
    return 8 + MAX_HEADER_BYTES + n_parameters


def load_masks(folder: str | Path, model: nn.Module) -> dict[str, torch.Tensor]:
    """The masks of ``folder/masks.safetensors`` (untrusted): its size is capped and every name, shape
    and dtype is checked against ``model``'s parameters before a tensor is read. A parameter without a
    mask is not pruned."""
    path = checkpoint_file(Path(folder), MASKS_FILE, "pruning masks")
    params = dict(model.named_parameters())
    _check_masks_file(path, max_masks_bytes(sum(p.numel() for p in params.values())))
    try:
        with safe_open(str(path), framework="pt") as f:
            found = {name: (tuple(f.get_slice(name).get_shape()), f.get_slice(name).get_dtype()) for name in f.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None
    for name, (shape, dtype) in found.items():
        if name not in params:
            raise CheckpointError(f"{path}: a mask for {name!r}, which is not a parameter of this model")
        if shape != tuple(params[name].shape):
            raise CheckpointError(f"{path}: the mask of {name} has shape {list(shape)}, the parameter "
                                  f"{list(params[name].shape)}")
        if dtype not in MASK_DTYPES:
            raise CheckpointError(f"{path}: the mask of {name} is {dtype}; masks must be BOOL or U8")
    try:
        return {name: mask != 0 for name, mask in load_file(str(path)).items()}
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path}: unreadable ({exc})") from None


def _check_masks_file(path: Path, limit: int) -> None:
    """A regular file of at most ``limit`` bytes with a safetensors header of at most MAX_HEADER_BYTES."""
    if not path.is_file():
        raise CheckpointError(f"{path}: no pruning masks (missing or not a regular file)")
    if path.stat().st_size > limit:
        raise CheckpointError(f"{path}: {path.stat().st_size:,} bytes is more than the masks of this model "
                              f"need (at most {limit:,})")
    with open(path, "rb") as fh:
        header = fh.read(8)
    if len(header) < 8 or struct.unpack("<Q", header)[0] > MAX_HEADER_BYTES:
        raise CheckpointError(f"{path}: not a safetensors file of this program (its header is missing or too large)")


def prune_checkpoint(folder: str | Path, ratio: float, method: str = "blind",
                     out: str | Path | None = None) -> tuple[Path, dict]:
    """Prune the checkpoint ``folder`` into ``out`` (default ``FOLDER-pruned-RATIO-METHOD``): a checkpoint
    folder with the pruned weights, ``masks.safetensors`` and ``"pruning": {"ratio", "method", "classes":
    {class: fraction pruned}}`` in config.json. Returns the folder and that record (plus the sizes)."""
    check_pruning(ratio, method)
    folder = Path(folder)
    named = folder if folder.name else folder.resolve()  # ('.' has no name to extend)
    out = check_output_folder(out or named.with_name(f"{named.name}-pruned-{ratio:g}-{method}"), folder)
    ckpt = load_local(folder)
    masks = prune_model(ckpt.model, ratio, method)
    record = {"ratio": ratio, "method": method, "classes": pruned_fractions(ckpt.model, masks)}
    ckpt.extra = {**without_stale(ckpt.extra), "pruning": record}
    save_derived(ckpt, out, {MASKS_FILE: masks})
    sizes = {"sparse_bytes": sparse_size_bytes(ckpt.model, masks), "dense_fp16_bytes": dense_size_bytes(ckpt.model)}
    return out, {**record, **sizes}
