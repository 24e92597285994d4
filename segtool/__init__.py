"""segtool: dbt for user segments.

from segtool import Project
project = Project.load("path/to/project")
project.run()
df = project.segments("behaviour")   # a polars DataFrame
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["Project", "load_project", "__version__"]


def __getattr__(name: str):
    # Lazy, so `import segtool` stays cheap for the CLI.
    if name == "Project":
        from segtool.api import Project

        return Project
    if name == "load_project":
        from segtool.api import Project

        return Project.load
    raise AttributeError(name)
