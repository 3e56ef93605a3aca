"""The plan of a training run: what a configuration and its data resolve to, built once before the
loop (timm's ``resolve_data_config``, dinov2's ``do_train``), and written to ``config.json`` as
``resolved``: the view augmentation, the input shape and memory format, the temperature of each code
length, the batch per process, the steps per epoch, the device, the precision and the number of processes.
"""

from __future__ import annotations

import dataclasses

from cibhash_ext import distributed
from cibhash_ext.config import TrainConfig
from cibhash_ext.data import RetrievalData
from cibhash_ext.pipeline import capped_batch, input_shape, n_batches
from cibhash_ext.transforms import AugmentConfig

__all__ = ["RunPlan"]


@dataclasses.dataclass(frozen=True)
class RunPlan:
    """What a run uses, resolved once from (configuration, data); the loop and what it calls read it.

    Attributes:
        augment (AugmentConfig): the built-in view augmentation.
        input_shape (tuple[int, int, int]): [C, H, W] of the images the model sees.
        channels_last (bool): the model and its inputs in channels-last memory format.
        temperatures (dict[int, float]): the NT-Xent temperature of each code length.
        batch_size (int): images per batch and process: the configured batch size, capped at each
            process's share of the training set.
        steps_per_epoch (int): global batches per epoch.
        device (str): where the model trains.
        bf16 (bool): bfloat16 autocast of the backbone.
        processes (int): processes training together (torch.distributed), 1 without.
    """

    augment: AugmentConfig
    input_shape: tuple[int, int, int]
    channels_last: bool
    temperatures: dict[int, float]
    batch_size: int
    steps_per_epoch: int
    device: str
    bf16: bool
    processes: int

    @classmethod
    def resolve(cls, cfg: TrainConfig, data: RetrievalData) -> "RunPlan":
        """The plan of ``cfg`` on ``data``.

        Raises:
            ValueError: the images need a fixed input size, or the training set gives a process fewer
                than 2 images.
        """
        augment = cfg.augment_config(data.channels, data.train.in_memory)
        batch_size = capped_batch(cfg.batch_size, len(data.train))
        return cls(
            augment=augment,
            input_shape=tuple(input_shape(augment, data)),
            channels_last=cfg.channels_last and cfg.backbone == "convnet",
            temperatures={v: cfg.temperature_for(v) for v in cfg.code_lengths},
            batch_size=batch_size,
            steps_per_epoch=n_batches(batch_size, len(data.train)),
            device=cfg.device,
            bf16=cfg.bf16,
            processes=distributed.world_size(),
        )

    def resolved(self) -> dict:
        """The ``resolved`` entry of ``config.json``: its keys and values as runs have always written
        them, and the keys added since (``batch_size``). The augmentation's ``interpolation``, added
        since, is written only where it is not the bilinear of every earlier run."""
        augment = dataclasses.asdict(self.augment)
        if augment["interpolation"] == "bilinear":
            del augment["interpolation"]
        return {"augment": augment, "temperature": {str(v): t for v, t in self.temperatures.items()},
                "input_shape": list(self.input_shape), "processes": self.processes, "batch_size": self.batch_size}
