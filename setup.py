"""Packaging lives in pyproject.toml; this file only ships conf/ inside the package.

The Hydra configs stay at the repository's top level (conf/, where a reader looks for them), and a
built wheel carries a copy as harness/conf/, which harness.paths.conf_dir() finds when there is no
checkout around it: `pip install <wheel>` then `harness-train` works from any folder.
"""

import os

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildPyWithConf(build_py):
    """build_py, plus conf/ copied to harness/conf/ in the build (editable installs read conf/ in place)."""

    def run(self):
        super().run()
        if not getattr(self, "editable_mode", False):
            self.copy_tree("conf", os.path.join(self.build_lib, "harness", "conf"))


setup(cmdclass={"build_py": BuildPyWithConf})
