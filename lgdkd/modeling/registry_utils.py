"""Lookup in detectron2 registries with an error that lists the valid names."""

import difflib

__all__ = ["get_from_registry", "role_class"]


def get_from_registry(registry, name: str, key: str):
    """``registry.get(name)``, or a KeyError naming ``key``, the valid names and the closest."""
    if name in registry:
        return registry.get(name)
    names = sorted(n for n, _ in registry)
    close = difflib.get_close_matches(name, names, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise KeyError(
        f"{key} = {name!r} is not registered. Valid names: "
        f"{', '.join(names) if names else '(none)'}.{hint}"
    )


def role_class(cls, base, key: str):
    """``cls`` if it subclasses the role ``base``, else a TypeError naming ``key``."""
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise TypeError(
            f"{key}: {getattr(cls, '__name__', cls)!r} is registered but is not a subclass of "
            f"lgdkd.modeling.roles.{base.__name__}; derive it from that class."
        )
    return cls
