"""Modules whose code runs on first use: `medsamix methods` reads the merge registry without torch's ~3 s import."""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType


def lazy_module(name: str) -> ModuleType:
    """`name` bound now, executed on its first attribute access (the standard library's `LazyLoader` recipe).

    An already imported module is returned as is; a later plain `import name` anywhere gets this same object."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None:
        raise ModuleNotFoundError(f"No module named {name!r}", name=name)
    loader = importlib.util.LazyLoader(spec.loader)
    spec.loader = loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    loader.exec_module(module)
    return module
