"""Load an lmms-eval task's utils.py from a path (tasks import theirs by file, not as a package)."""

import importlib.util


def load_task_utils(path: str):
    spec = importlib.util.spec_from_file_location("lmms_task_utils", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
