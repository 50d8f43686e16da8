"""Reading geodino's YAML configs: the LightningCLI and the data section alone."""

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from geodino.errors import ConfigError


def run_lightning_cli(args: list[str] | None) -> Any:
    """Run ``geodino fit|validate|test|predict`` through LightningCLI.

    Models and data modules are given by ``class_path`` in the config, as in TorchGeo's
    configs, so any LightningModule or LightningDataModule can be named.

    Args:
        args: the command line, starting with the subcommand (None: ``sys.argv[1:]``, which
            LightningCLI then reads itself instead of warning that both were given).

    Returns:
        the LightningCLI object after the run.
    """
    from lightning.pytorch import LightningDataModule, LightningModule, Trainer
    from lightning.pytorch.cli import LightningCLI
    from lightning.pytorch.plugins.io import TorchCheckpointIO

    from geodino.checkpoints import SafeCheckpointIO, load_checkpoint

    class GeoDINOCLI(LightningCLI):
        def instantiate_trainer(self, **kwargs: Any) -> Trainer:
            trainer = super().instantiate_trainer(**kwargs)
            # resuming reads checkpoints without unpickling code (unless a config names its
            # own checkpoint I/O plugin)
            if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
                trainer.strategy.checkpoint_io = SafeCheckpointIO()
            return trainer

        def _parse_ckpt_path(self) -> None:
            try:
                super()._parse_ckpt_path()
            except Exception:
                # say why the file cannot be read (truncated, pickled code) in one paragraph
                path = self.config[self.config.subcommand].get("ckpt_path")
                load_checkpoint(path)
                raise

    return GeoDINOCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=args,
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
    )


def read_config(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file.

    Args:
        path: the config file.

    Returns:
        its content.

    Raises:
        ConfigError: if the file is missing or not a YAML mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; see configs/ for examples.")
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} is not a YAML mapping of sections.")
    return data


def datamodule_from_config(path: str | Path, overrides: Sequence[str] = ()) -> Any:
    """Build the data module of a config's ``data`` section (``class_path`` + ``init_args``).

    Args:
        path: the config file.
        overrides: command-line arguments over the section, as ``geodino fit`` takes them
            (``--data.init_args.chip_size=64``, or flag and value as two items).

    Returns:
        the instantiated data module.

    Raises:
        ConfigError: if the config has no ``data`` section.
    """
    from jsonargparse import ArgumentParser
    from lightning.pytorch import LightningDataModule

    config = read_config(path)
    if "data" not in config:
        raise ConfigError(f"config file {path} has no 'data' section.")
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(LightningDataModule, "data")
    try:
        section = json.dumps(config["data"])
        cfg = parser.parse_args(["--data", section, *overrides])
    except Exception as error:  # jsonargparse reports every config problem this way
        raise ConfigError(f"config file {path}, section 'data': {error}") from error
    return parser.instantiate(cfg).data
