"""The provider's one setting: how to start geodino."""

from __future__ import annotations

from processing.core.ProcessingConfig import ProcessingConfig, Setting

#: Key of the setting in Settings > Options > Processing > Providers > geodino.
COMMAND = "GEODINO_COMMAND"


def register(group: str) -> None:
    """Add the setting to Processing's options, under the provider's group.

    Args:
        group: the provider's name, the heading of its settings.
    """
    ProcessingConfig.addSetting(
        Setting(
            group,
            COMMAND,
            "geodino executable, or the python of its environment (empty: geodino on PATH)",
            "",
            valuetype=Setting.FILE,
        )
    )
    ProcessingConfig.readSettings()


def unregister() -> None:
    """Remove the setting from Processing's options."""
    ProcessingConfig.removeSetting(COMMAND)


def configured_command() -> str:
    """The setting's value: a path, or empty for ``geodino`` on ``PATH``."""
    return str(ProcessingConfig.getSetting(COMMAND) or "")
