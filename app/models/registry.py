"""The registry of model families.

Each family module registers its servable module class with :func:`register_family`; the checkpoint loader,
the service and the tests look families up here instead of branching on names (timm's ``@register_model``).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

from torch import nn


class FamilyModule(nn.Module):
    """Base of every family's servable module: ``config_class`` is set by the class; ``family``, ``summary`` and
    ``tiny_config`` by :func:`register_family`."""

    family: ClassVar[str]
    config_class: ClassVar[type[Any]]
    # One line on what a checkpoint of the family is and what the service does with it (the model cards, the report).
    summary: ClassVar[str] = ""
    # The smallest config that still runs every layer (diffusers' testers): the tests build every family from it.
    tiny_config: ClassVar[dict[str, Any]] = {}


_FAMILIES: dict[str, type[FamilyModule]] = {}

ModuleT = TypeVar("ModuleT", bound=type[FamilyModule])


class UnknownFamilyError(KeyError):
    """Raised when a checkpoint or request names a family nobody registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


def register_family(
    name: str, *, summary: str = "", tiny: dict[str, Any] | None = None
) -> Callable[[ModuleT], ModuleT]:
    """Class decorator: make ``cls`` the servable module of family ``name``, described by ``summary`` (one line,
    shown in the model report) and built in the tests from ``tiny`` (config fields; the rest take their defaults).

    The class must define ``config_class`` (a frozen dataclass) and accept an instance of it as its only argument.
    """

    def decorate(cls: ModuleT) -> ModuleT:
        if name in _FAMILIES:
            raise ValueError(f"family {name!r} is registered twice")
        if not dataclasses.is_dataclass(getattr(cls, "config_class", None)):
            raise TypeError(f"{cls.__name__} needs a dataclass `config_class`")
        cls.family = name
        _FAMILIES[name] = cls
        describe_family(name, summary=summary, tiny=tiny)
        return cls

    return decorate


def describe_family(name: str, *, summary: str = "", tiny: dict[str, Any] | None = None) -> None:
    """Set the summary and tiny config of a registered family (what :func:`register_family`'s keywords do), checking
    that ``tiny`` names only fields of its config."""
    cls = family_class(name)
    if tiny is not None:
        config_from_dict(cls.config_class, tiny)  # an unknown field fails here, at import, not in some test
    cls.summary = summary
    cls.tiny_config = dict(tiny or {})


def unregister_family(name: str) -> None:
    """Forget family ``name`` (a test's toy family, once the test is done)."""
    _FAMILIES.pop(name, None)


def list_families() -> list[str]:
    """Names of every registered family, sorted."""
    return sorted(_FAMILIES)


def family_class(name: str) -> type[FamilyModule]:
    """The module class of family ``name``."""
    try:
        return _FAMILIES[name]
    except KeyError:
        raise UnknownFamilyError(
            f"unknown model family {name!r}; known families: {', '.join(list_families())}"
        ) from None


def config_from_dict(config_class: type[Any], values: dict[str, Any]) -> Any:
    """Build a config dataclass, refusing unknown or missing fields with a readable message."""
    fields = {f.name: f for f in dataclasses.fields(config_class)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(f"{config_class.__name__} has no field(s) {unknown}; valid fields: {sorted(fields)}")
    # JSON turns tuples into lists; dataclass configs are frozen and hashable, so give tuples back.
    converted = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    return config_class(**converted)


def config_to_json(config: Any) -> str:
    return json.dumps(dataclasses.asdict(config), sort_keys=True)


def build_model(name: str, config: dict[str, Any] | None = None) -> FamilyModule:
    """Instantiate family ``name`` from a plain dict (as stored in a checkpoint); defaults for missing fields."""
    cls = family_class(name)
    return cls(config_from_dict(cls.config_class, config or {}))
