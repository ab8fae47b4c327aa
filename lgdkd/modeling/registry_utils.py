"""Lookup in detectron2 registries with an error that lists the valid names."""

import difflib

__all__ = ["get_from_registry"]


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
