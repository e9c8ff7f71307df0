"""`hydra/launcher=packed` for Hydra: Hydra imports every module of the `hydra_plugins` namespace
package when it starts, and instantiates launchers only from it, so this registers the config and
names the launcher here; the code is harness.pack.launcher."""

from hydra.core.config_store import ConfigStore

from harness.pack.launcher import PackedLauncher as _PackedLauncher, PackedLauncherConf


class PackedLauncher(_PackedLauncher):
    """harness.pack.launcher.PackedLauncher, under the name Hydra accepts."""


ConfigStore.instance().store(group="hydra/launcher", name="packed", node=PackedLauncherConf,
                             provider="lora-harness")
