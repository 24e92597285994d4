from segtool.project.loader import LoadedProject, load_project

__all__ = ["LoadedProject", "load_project"]
