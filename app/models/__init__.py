"""Model architectures, shared by ``training`` and ``app``. Imports no web or training code.

Importing this package imports every module in it, so each family's ``@register_family`` runs: adding a family is
adding a module, with no list to edit.
"""

import importlib
import pkgutil

from .registry import build_model, family_class, list_families, register_family

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["build_model", "family_class", "list_families", "register_family"]
