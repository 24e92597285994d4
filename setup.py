"""Ship project_template/ inside the wheel as segtool/_template.

The template lives at the top of the repo (where people look for it); this
hook copies it into the built package so `segtool init` works from a wheel.
Editable installs read the repo folder directly (see segtool/scaffold.py).
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildWithTemplate(build_py):
    def run(self):
        super().run()
        src = Path(__file__).parent / "project_template"
        dst = Path(self.build_lib) / "segtool" / "_template"
        if src.is_dir():
            shutil.rmtree(dst, ignore_errors=True)
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("target", "*.duckdb*", "__pycache__"))


setup(cmdclass={"build_py": BuildWithTemplate})
