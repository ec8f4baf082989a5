"""hydra-optuna-sweeper's search-space syntax, turned into Optuna distributions.

`interval(a, b)`, `int(interval(a, b))`, `tag(log, interval(a, b))`, `choice(...)`,
`range(...)` and `glob(...)` become distributions; plain `key=value` stays fixed.
"""

from collections.abc import Mapping, Sequence
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import (
    ChoiceSweep,
    IntervalSweep,
    Override,
    RangeSweep,
    Transformer,
)
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)


def to_distribution(override: Override) -> BaseDistribution:
    """The Optuna distribution of one sweep override."""
    value = override.value()
    if isinstance(value, ChoiceSweep):
        return CategoricalDistribution(
            list(override.sweep_iterator(transformer=Transformer.encode))
        )
    if isinstance(value, RangeSweep):
        values = list(override.sweep_iterator())
        if all(isinstance(x, int) for x in (value.start, value.stop, value.step)):
            return IntDistribution(values[0], values[-1], step=value.step)
        return FloatDistribution(values[0], values[-1], step=value.step)
    if isinstance(value, IntervalSweep):
        log = "log" in value.tags
        if isinstance(value.start, int) and isinstance(value.end, int):
            return IntDistribution(value.start, value.end, log=log)
        return FloatDistribution(value.start, value.end, log=log)
    raise ValueError(
        f"{override.input_line}: the Optuna sweeper takes choice(), range() and interval() "
        "sweeps (for glob() over config groups use the basic sweeper)"
    )


def parse_search_space(
    params: Mapping[str, Any], arguments: Sequence[str]
) -> tuple[dict[str, BaseDistribution], list[str]]:
    """(distributions by override key, fixed overrides) from the config's `params` and the
    command line; the command line wins for a key given in both."""
    lines = [f"{key}={value}" for key, value in params.items()]
    parser = OverridesParser.create()
    overrides = {o.get_key_element(): o for o in parser.parse_overrides(lines + list(arguments))}
    space: dict[str, BaseDistribution] = {}
    fixed: list[str] = []
    for key, override in overrides.items():
        if override.is_sweep_override():
            space[key] = to_distribution(override)
        else:
            fixed.append(override.input_line)
    return space, fixed


def format_override(key: str, value: Any) -> str:
    """A sampled value as a Hydra override (floats in full precision, None as null)."""
    if value is None:
        return f"{key}=null"
    return f"{key}={value!r}" if isinstance(value, float) else f"{key}={value}"
