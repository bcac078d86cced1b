"""The config's schema: one dataclass per config node, with the type of each key.

They mirror the code they configure (the DataModule's, the models' and the optimizers' arguments, the
Trainer's). :func:`fashion_mnist_softmax.config.checks.check_config` merges a composed config into them, so
that an unknown key, given with ``+`` or not, or a value of the wrong type is refused in the project's own
words before the run dir exists. They are not put in the YAML files' defaults lists: Hydra would then refuse
some of those mistakes itself, in its own words, and still accept ``+optim.lrr=0.1``. A node whose
``_target_`` has no schema here (a user's own optimizer) is left to its class.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import MISSING

# OmegaConf reads these annotations at run time, where it takes Optional[...] but not X | None
# ruff: noqa: UP045


@dataclass
class DataConfig:
    """:class:`fashion_mnist_softmax.data.datamodule.FashionMNISTDataModule`."""

    _target_: str = "fashion_mnist_softmax.data.datamodule.FashionMNISTDataModule"
    root: str = MISSING
    batch_size: int = 256
    val_size: int = 5000
    split_seed: int = 0
    shuffle_seed: int = 0
    normalize: bool = False
    search_dirs: Any = ()  # folders, or one folder
    download: bool = True
    download_timeout: float = 10.0
    expected_sizes: Optional[dict[str, int]] = None


@dataclass
class TrainerConfig:
    """The arguments of ``lightning.Trainer`` that a run may set; train.py passes the callbacks and loggers."""

    _target_: str = "lightning.Trainer"
    accelerator: str = "auto"
    devices: Any = 1  # a number, a list of device ids, or "auto"
    strategy: str = "auto"
    num_nodes: int = 1
    precision: str = "32-true"
    max_epochs: int = 10
    min_epochs: Optional[int] = None
    max_steps: int = -1
    min_steps: Optional[int] = None
    max_time: Optional[str] = None
    log_every_n_steps: int = 50
    gradient_clip_val: Optional[float] = None
    gradient_clip_algorithm: Optional[str] = None
    accumulate_grad_batches: int = 1
    limit_train_batches: Any = None  # a number of batches, or a fraction
    limit_val_batches: Any = None
    limit_test_batches: Any = None
    val_check_interval: Any = None
    check_val_every_n_epoch: Optional[int] = 1
    num_sanity_val_steps: int = 0
    deterministic: Any = None
    benchmark: Optional[bool] = None
    detect_anomaly: bool = False
    use_distributed_sampler: bool = False
    default_root_dir: Optional[str] = None


@dataclass
class ScratchSGDConfig:
    """:class:`fashion_mnist_softmax.models.scratch.SGD`."""

    _target_: str = "fashion_mnist_softmax.models.scratch.SGD"
    lr: float = 0.1
    momentum: float = 0.0
    weight_decay: float = 0.0


@dataclass
class SGDConfig:
    """``torch.optim.SGD``."""

    _target_: str = "torch.optim.SGD"
    lr: float = 0.1
    momentum: float = 0.0
    dampening: float = 0.0
    weight_decay: float = 0.0
    nesterov: bool = False
    maximize: bool = False
    foreach: Optional[bool] = None
    differentiable: bool = False
    fused: Optional[bool] = None


@dataclass
class AdamConfig:
    """``torch.optim.Adam``."""

    _target_: str = "torch.optim.Adam"
    lr: float = 0.001
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    weight_decay: float = 0.0
    amsgrad: bool = False
    maximize: bool = False
    foreach: Optional[bool] = None
    capturable: bool = False
    differentiable: bool = False
    fused: Optional[bool] = None
    decoupled_weight_decay: bool = False


@dataclass
class CosineAnnealingConfig:
    """``torch.optim.lr_scheduler.CosineAnnealingLR``."""

    _target_: str = "torch.optim.lr_scheduler.CosineAnnealingLR"
    T_max: int = MISSING
    eta_min: float = 0.0
    last_epoch: int = -1


@dataclass
class ModelConfig:
    """:class:`fashion_mnist_softmax.models.classifier.Classifier`, either impl."""

    _target_: str = MISSING
    _recursive_: bool = False
    _convert_: str = "all"
    optimizer: Any = MISSING
    scheduler: Any = None
    num_inputs: int = 784
    num_outputs: int = 10


@dataclass
class PathsConfig:
    root_dir: str = MISSING
    data_dir: str = MISSING
    log_dir: str = MISSING
    output_dir: str = MISSING


@dataclass
class TrainConfig:
    """``conf/train.yaml``. ``optim`` and ``scheduler`` are checked against the schema of their ``_target_``."""

    task_name: str = "train"
    seed: int = 42
    test_ckpt: str = "best"  # best, last, or the path of a checkpoint
    ckpt_path: Optional[str] = None
    optim: Any = MISSING
    impl: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    scheduler: Any = None
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: Any = None
    callbacks: Any = None
    paths: PathsConfig = field(default_factory=PathsConfig)


@dataclass
class EvalConfig:
    """``conf/eval.yaml``."""

    task_name: str = "eval"
    seed: int = 42
    ckpt_path: Optional[str] = MISSING
    data: DataConfig = field(default_factory=DataConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)


@dataclass
class PredictConfig:
    """``conf/predict.yaml``."""

    task_name: str = "predict"
    seed: int = 42
    ckpt_path: Optional[str] = MISSING
    images: Any = ()  # files or folders, or one
    indices: Any = ()  # test-image numbers, or one
    top_k: int = 3
    data: DataConfig = field(default_factory=DataConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)


# the schema of each entry point's config, by its config name
APPS: dict[str, type] = {"train": TrainConfig, "eval": EvalConfig, "predict": PredictConfig}
# the schema of a node by its _target_
TARGETS: dict[str, type] = {
    schema._target_: schema
    for schema in (DataConfig, TrainerConfig, ScratchSGDConfig, SGDConfig, AdamConfig, CosineAnnealingConfig)
}
