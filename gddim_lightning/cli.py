"""``python -m gddim_lightning {fit,validate,test,predict}``: LightningCLI with shape linking."""

from __future__ import annotations

from lightning.pytorch.cli import LightningCLI

from .module import DiffusionModule


class GDDIMCLI(LightningCLI):
    """LightningCLI that links the data module's ``data_shape`` into the model (process and backbone
    are built from it), so a config never states a shape twice."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.data_shape", "model.init_args.data_shape", apply_on="instantiate")


def main(args: list[str] | None = None, run: bool = True) -> GDDIMCLI:
    return GDDIMCLI(
        DiffusionModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": False},
        args=args,
        run=run,
    )
