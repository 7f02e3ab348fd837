"""Hypothesis strategies for the wire contract: JSON values, ids, and any message model from its annotations.

`models(M)` reads M's fields (annotation plus pydantic metadata: patterns, lengths, bounds) and draws
values that satisfy them, so every drawn instance is a valid M without a hand-written strategy per model.
"""

from __future__ import annotations

import dataclasses
import types
from datetime import UTC, datetime, timedelta, timezone
from enum import Enum
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin

import annotated_types as at
from hypothesis import strategies as st
from pydantic import AwareDatetime, BaseModel, StringConstraints
from pydantic.fields import FieldInfo

from schemas.messages import TENANT_ID_PATTERN

M = TypeVar("M", bound=BaseModel)

# RFC 8259 JSON scalars as Python's json module writes them (NaN and infinities too: both parsers accept them)
json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
# the same without NaN/infinity: values that round-trip through pydantic's serialiser unchanged
finite_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) \
    | st.text(max_size=20)


def json_values(scalars: st.SearchStrategy[Any] = json_scalars) -> st.SearchStrategy[Any]:
    return st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                        | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)


def json_objects(scalars: st.SearchStrategy[Any] = json_scalars) -> st.SearchStrategy[dict[str, Any]]:
    return st.dictionaries(st.text(max_size=12), json_values(scalars), max_size=6)


tenant_ids = st.from_regex(TENANT_ID_PATTERN, fullmatch=True)
# whole-minute UTC offsets: what an RFC 3339 timestamp can carry
offsets = st.integers(-23 * 60 - 59, 23 * 60 + 59).map(lambda m: timezone(timedelta(minutes=m)))
aware_datetimes = st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30),
                               timezones=st.just(UTC) | offsets)


def models(model: type[M], *, extras: bool = False) -> st.SearchStrategy[M]:
    """Valid instances of `model`; with `extras`, also members the model does not declare (it allows them)."""
    fields = st.fixed_dictionaries({name: _from_field(info) for name, info in model.model_fields.items()})
    names = st.text(min_size=1, max_size=10).filter(lambda n: n not in model.model_fields and n != "signature")
    # a None extra is left out by to_json() (exclude_none), so it could not come back
    more = st.dictionaries(names, json_values(finite_scalars).filter(lambda v: v is not None), max_size=3)
    return st.builds(lambda declared, extra: model(**declared, **extra), fields, more if extras else st.just({}))


def _from_field(info: FieldInfo) -> st.SearchStrategy[Any]:
    return _from_annotation(Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation)


def _from_annotation(tp: Any) -> st.SearchStrategy[Any]:
    origin, args = get_origin(tp), get_args(tp)
    if origin is Annotated:
        return _constrained(args[0], _constraints(args[1:]))
    if origin in (Union, types.UnionType):
        return st.one_of(*(_from_annotation(a) for a in args))
    if origin is Literal:
        return st.sampled_from(args)
    if origin is list:
        return st.lists(_from_annotation(args[0]), max_size=3)
    if origin is tuple:
        return st.tuples(*(_from_annotation(a) for a in args))
    if origin is dict:
        return st.dictionaries(_from_annotation(args[0]), _from_annotation(args[1]), max_size=3)
    return _constrained(tp, {})


def _constraints(metadata: tuple[Any, ...]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for item in metadata:
        if isinstance(item, FieldInfo):
            found.update(_constraints(tuple(item.metadata)))
        elif isinstance(item, StringConstraints):
            found.update({k: getattr(item, k) for k in ("pattern", "min_length", "max_length")
                          if getattr(item, k) is not None})
        elif isinstance(item, at.MinLen | at.MaxLen | at.Ge | at.Gt | at.Le | at.Lt):
            found.update(dataclasses.asdict(item))
        else:
            raise TypeError(f"no strategy for constraint {item!r}: teach tests/support/strategies.py")
    return found


def _constrained(tp: Any, c: dict[str, Any]) -> st.SearchStrategy[Any]:
    if get_origin(tp) is not None:  # a container with length bounds, e.g. Annotated[list[KeyType], Field(...)]
        inner = _from_annotation(tp)
        return inner.filter(lambda v: c.get("min_length", 0) <= len(v) <= c.get("max_length", 10**9))
    if tp is str:
        if "pattern" in c:
            return st.from_regex(c["pattern"], fullmatch=True)
        return st.text(min_size=c.get("min_length", 0), max_size=min(c.get("max_length", 40), 40)) \
            | st.text(min_size=c.get("min_length", 0), max_size=c.get("max_length", 300))
    if tp is bool:
        return st.booleans()
    if tp is int:
        low = c.get("ge", c["gt"] + 1 if "gt" in c else None)
        high = c.get("le", c["lt"] - 1 if "lt" in c else None)
        return st.integers(low, high)
    if tp is float:
        return st.floats(allow_nan=False, allow_infinity=False)
    if tp is AwareDatetime:
        return aware_datetimes
    if tp is datetime:
        return aware_datetimes | st.datetimes()
    if tp is Any:
        return json_values(finite_scalars)
    if tp is type(None):
        return st.none()
    if isinstance(tp, type) and issubclass(tp, Enum):
        return st.sampled_from(tp)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return models(tp)
    raise TypeError(f"no strategy for {tp!r}: teach tests/support/strategies.py")
