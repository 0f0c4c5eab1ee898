"""The config argument parser: `configs/x.py:size=8b,runlocal` -> typed, checked fields."""

from collections.abc import Mapping, Sequence

import ml_collections

_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no")


def parse_arg(arg: str | None, choices: Mapping[str, Sequence[str]] | None = None, *,
              source: str = "config", **defaults) -> ml_collections.ConfigDict:
    """`"size=4b,runlocal"` -> ConfigDict(size="4b", runlocal=True, ...), typed like `defaults`.

    Each default fixes its key's type: a bool key may be given bare (`runlocal`) or as
    `key=true|false`; int, float and str keys need `key=value`. `choices` lists the allowed
    values of str keys. An unknown key, a missing or badly typed value, or a value outside its
    choices raises ValueError naming `source` (the config file) and the valid values (as
    big_vision's `parse_arg`, but strict).
    """
    out = dict(defaults)
    for item in filter(None, (arg or "").split(",")):
        key, has_value, value = item.partition("=")
        key = key.strip()
        if key not in defaults:
            raise ValueError(f"{source}: argument {key!r} in {arg!r} is unknown; valid "
                             f"arguments: {_describe(defaults, choices)}")
        out[key] = _parse_value(key, value.strip() if has_value else None, defaults[key],
                                f"{source}: argument {key!r} in {arg!r}")
        allowed = (choices or {}).get(key)
        if allowed is not None and out[key] not in allowed:
            raise ValueError(f"{source}: argument {key}={out[key]!r} in {arg!r}; expected one "
                             f"of {list(allowed)}")
    return ml_collections.ConfigDict(out)


def _parse_value(key: str, value: str | None, default, where: str):
    kind = type(default)
    if kind is bool:
        if value is None or value.lower() in _TRUE:
            return True
        if value.lower() in _FALSE:
            return False
    elif value:
        try:
            return kind(value)
        except ValueError:
            pass
    expected = "a bare flag or true/false" if kind is bool else f"a value of type {kind.__name__}"
    raise ValueError(f"{where}: got {value!r}, expected {expected}")


def _describe(defaults: Mapping, choices: Mapping[str, Sequence[str]] | None) -> str:
    parts = []
    for key, default in defaults.items():
        allowed = (choices or {}).get(key)
        kind = "|".join(allowed) if allowed else type(default).__name__
        parts.append(f"{key}={kind} (default {default!r})")
    return ", ".join(parts)
