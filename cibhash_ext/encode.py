"""Inference: load a trained model (:func:`load_model`, an :class:`Encoder` record) and turn images
into packed codes (:func:`encode`), the same codes in Python and from ``cibhash encode``;
:func:`export_encoder` gives a ``torch.export`` program of the encode path.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from typing import Sequence

import torch
from torch import Tensor, nn

from cibhash_ext import run_dir as runs
from cibhash_ext.config import TrainConfig, check_device, stored_config
from cibhash_ext.data import ImageSet, load_dataset
from cibhash_ext.files import image_files, readable_images, skipped_warning
from cibhash_ext.models import CIBHashModel, build_model
from cibhash_ext.pipeline import autocast, eval_batches, to_model_input
from cibhash_ext.transforms import EvalTransform
from cibhash_ext.progress import progress

__all__ = ["Encoder", "load_model", "encode", "encode_images", "encode_run", "export_encoder", "readable_files"]


@dataclasses.dataclass(frozen=True, eq=False)
class Encoder:
    """A trained model as a record of the module and what inference needs (as torchvision's
    ``Weights`` carries ``transforms`` and ``meta``): what :func:`load_model` returns and
    :func:`encode` takes.

    Attributes:
        module (CIBHashModel): the network, in eval mode.
        transform (EvalTransform): one raw PIL image -> the normalised Tensor[C, H, W] it sees.
        input_shape (tuple[int, int, int]): [C, H, W] of its input.
        code_lengths (tuple[int, ...]): its code lengths, in bits.
        config (TrainConfig): the configuration it was trained with (its recipe).
        device (str): where the module is.
        bf16 (bool): bfloat16 autocast of the backbone, as in training.
        channels_last (bool): its input in channels-last memory format.
    """

    module: CIBHashModel
    transform: EvalTransform
    input_shape: tuple[int, int, int]
    code_lengths: tuple[int, ...]
    config: TrainConfig
    device: str
    bf16: bool
    channels_last: bool

    @classmethod
    def of(cls, module: CIBHashModel, cfg: TrainConfig, input_shape: Sequence[int]) -> "Encoder":
        """The record of ``module`` trained with ``cfg`` on images of ``input_shape`` [C, H, W]; puts
        the module in eval mode."""
        shape = tuple(int(v) for v in input_shape)
        aug = cfg.augment_config(shape[0])
        module.eval()
        view = EvalTransform(shape, aug.mean, aug.std, aug.interpolation)
        return cls(module, view, shape, tuple(module.code_lengths), cfg, str(cfg.device), cfg.bf16,
                   cfg.channels_last and cfg.backbone == "convnet")


def load_model(run_dir: str | os.PathLike, device: str | torch.device | None = None,
               backbone: nn.Module | None = None) -> Encoder:
    """The trained model of a run directory, loaded weights-only and checked, as an :class:`Encoder`
    record: the module in eval mode, its ``transform`` (prepares one raw PIL image for it), its
    ``input_shape``, ``code_lengths`` and ``config``.

    Reads the run's ``model.pt`` (its ``checkpoint.pt`` for runs that have none yet).

    Args:
        run_dir (str): a run directory written by :func:`cibhash_ext.train`.
        device (str or torch.device, optional): where to put the model (default: the run's device
            if it is available, else the CPU).
        backbone (nn.Module, optional): the backbone module, for runs trained with a custom one.

    Returns:
        Encoder: the record of the trained model.
    """
    run_dir = os.fspath(run_dir)
    weights = os.path.join(run_dir, runs.MODEL_FILE)
    if os.path.isfile(weights):
        state = runs.load_weights(weights)
        cfg, shape, state_dict = stored_config(state["config"]), state["input_shape"], state["state_dict"]
    else:
        cfg = runs.load_run_config(run_dir)
        checkpoint = runs.load_checkpoint(run_dir)
        shape, state_dict = checkpoint["input_shape"], checkpoint["model"]
    if device is None:
        device = cfg.device if not cfg.device.startswith("cuda") or torch.cuda.is_available() else "cpu"
    check_device(device)
    cfg = dataclasses.replace(cfg, device=str(device))
    model = build_model(cfg, shape, backbone=backbone, load_weights=False)  # the state dict holds the weights
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as exc:
        raise ValueError(f"the weights of {run_dir} do not fit its model: {str(exc).splitlines()[0]}") from None
    return Encoder.of(model, cfg, shape)


@torch.no_grad()
def encode_images(encoder: Encoder, images: ImageSet, batch_size: int = 1024, workers: int = 0,
                  show_progress: bool = False, desc: str = "encode") -> dict[int, Tensor]:
    """Deterministic packed codes of every image of an ImageSet, per code length, on the CPU.

    Args:
        encoder (Encoder): a trained model (:func:`load_model`, :meth:`Encoder.of`).
        images (ImageSet): in-memory images, files or dataset items.
        batch_size (int): images per forward pass.
        workers (int): DataLoader workers for files.
        show_progress (bool): a progress bar on stderr.

    Returns:
        dict mapping L to Tensor[N, ceil(L / 8)], uint8 (LSB-first, the FAISS layout).
    """
    encoder.module.eval()
    parts: dict[int, list[Tensor]] = {v: [] for v in encoder.code_lengths}
    total = (len(images) + batch_size - 1) // batch_size
    batches = eval_batches(images, encoder.transform, batch_size, workers)
    for x in progress(batches, desc, total, show_progress, "batch"):
        with autocast(encoder.device, encoder.bf16):
            codes = encoder.module.encode(to_model_input(x, encoder.device, encoder.channels_last))
        for v, c in codes.items():
            parts[v].append(c.cpu())
    return {v: torch.cat(p) if p else torch.zeros(0, (v + 7) // 8, dtype=torch.uint8) for v, p in parts.items()}


def _as_image_set(images) -> ImageSet:
    from PIL import Image

    if isinstance(images, (str, os.PathLike)):
        return ImageSet(None, paths=readable_files([images]))
    if isinstance(images, Tensor):
        if images.dim() == 3:
            images = images.unsqueeze(0)
        if images.dim() != 4 or not (images.dtype == torch.uint8 or images.is_floating_point()):
            raise ValueError(f"an image tensor must be uint8 (0-255) or float (0-1) [N, C, H, W], got {images.dtype} "
                             f"of shape {tuple(images.shape)}")
        return ImageSet(None, images=images.cpu())
    if isinstance(images, torch.utils.data.Dataset):
        return ImageSet(None, items=(images, list(range(len(images)))))
    if isinstance(images, Sequence) and images and all(isinstance(i, Image.Image) for i in images):
        return ImageSet(None, items=(list(images), list(range(len(images)))))
    if isinstance(images, Sequence) and images and all(isinstance(i, (str, os.PathLike)) for i in images):
        return ImageSet(None, paths=readable_files(images))
    raise TypeError("images must be a file or folder path, a list of paths or of PIL images, a Dataset or an image "
                    f"tensor [N, C, H, W], got {type(images).__name__}")


def encode(model: Encoder, images, nbits: int | None = None, batch_size: int = 256) -> dict[int, Tensor] | Tensor:
    """Packed binary codes of images, identical to what ``cibhash encode`` writes for the same files.

    Args:
        model (Encoder): from :func:`load_model` (a run of :func:`cibhash_ext.train`).
        images: image file paths or folders (searched recursively, sorted), PIL images, a Dataset
            of images (or (image, label) pairs), or a tensor batch [N, C, H, W] (uint8 0-255 or
            float 0-1) at any size (resized to the model's input).
        nbits (int, optional): one code length of the model; None returns every length.
        batch_size (int): images per forward pass.

    Returns:
        Tensor[N, ceil(nbits / 8)] uint8 when ``nbits`` is given, else a dict mapping each code length
        to its codes. Bit j of a code is bit ``j % 8`` of byte ``j // 8`` (the FAISS layout).
    """
    if not isinstance(model, Encoder):
        raise TypeError(f"model must be the Encoder that cibhash_ext.load_model returns (it carries its transform "
                        f"and settings), got {type(model).__name__}")
    if nbits is not None and nbits not in model.code_lengths:
        raise ValueError(f"nbits must be one of the model's code lengths {list(model.code_lengths)}, got {nbits}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    codes = encode_images(model, _as_image_set(images), batch_size)
    return codes[nbits] if nbits is not None else codes


def encode_run(run_dir: str, inputs: Sequence[str] | None = None, split: str | None = None, batch_size: int = 512,
               workers: int = 0, show_progress: bool = True) -> tuple[list[str], dict[int, Tensor]]:
    """Packed codes, at every code length of a trained run, of image files or of a split of the run's
    dataset (exactly one of ``inputs`` and ``split``): what ``cibhash encode`` and ``index build`` use.

    Returns:
        (names, codes): one name per image (its path, or its position in the split) and a dict
        mapping L to Tensor[n, ceil(L / 8)] uint8 in the same order.
    """
    if bool(inputs) == bool(split):
        raise ValueError("give either image files/folders or --split, not both and not neither")
    if split is not None and split not in ("query", "database", "train"):
        raise ValueError(f"split must be 'query', 'database' or 'train', got {split!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    model = load_model(run_dir)
    if split:
        cfg = model.config
        images = getattr(load_dataset(cfg.dataset, cfg.data_root, **cfg.dataset_options()), split)
        names = [str(i) for i in range(len(images))]
    else:
        names = readable_files(inputs)
        images = ImageSet(None, paths=names)
    return names, encode_images(model, images, batch_size, workers, show_progress)


def readable_files(inputs: Sequence[str]) -> list[str]:
    """The image files of ``inputs`` (files, folders searched recursively): an unreadable file named
    in ``inputs`` is an error; unreadable files inside a folder are left out with one warning."""
    good, bad = readable_images(image_files(inputs))
    named = {os.path.abspath(os.fspath(i)) for i in inputs if not os.path.isdir(i)}
    for path in bad:
        if os.path.abspath(path) in named:
            raise ValueError(f"{path} is not a readable image (empty, truncated or not an image file)")
    if bad:
        warnings.warn(skipped_warning(bad), stacklevel=3)
    if not good:
        raise ValueError(f"no readable image among {[os.fspath(i) for i in inputs]}")
    return good


class _EncodePath(nn.Module):
    def __init__(self, model: CIBHashModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        return tuple(self.model.encode(images)[v] for v in self.model.code_lengths)


def export_encoder(model: Encoder, batch: int = 2):
    """A ``torch.export`` program of the encode path: normalised images [N, C, H, W] (float32, N
    dynamic) -> a tuple of packed uint8 codes, one per code length in ``model.code_lengths`` order.

    Runs in float32 (the export has no autocast): codes can differ from :func:`encode` in the rare
    bits whose logit is within bfloat16 rounding of 0 when the run trained with ``bf16``.
    """
    if not isinstance(model, Encoder):
        raise TypeError(f"model must be the Encoder that cibhash_ext.load_model returns, got {type(model).__name__}")
    model.module.eval()
    example = torch.zeros(batch, *model.input_shape, device=model.device)
    n = torch.export.Dim("batch", min=1)
    with torch.no_grad():
        return torch.export.export(_EncodePath(model.module), (example,), dynamic_shapes=({0: n},))
