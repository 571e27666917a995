"""Schemathesis hooks for event-manager (loaded through SCHEMATHESIS_HOOKS by
tests/it/schemathesis.rs).

The OpenAPI document states every rule of a single parameter as JSON Schema, and the rules
between parameters in descriptions, because JSON Schema cannot relate two query parameters.
These hooks teach the generator exactly those documented relations, and only for the cases it
means to be valid; cases meant to be invalid are sent as generated.
"""

import os
import re
from datetime import datetime, timedelta, timezone

import schemathesis

PERIOD = timedelta(hours=int(os.environ["EM_SCHEMATHESIS_PERIOD_HOURS"]))

# Mirrors the grammar of `date` (the document's pattern): date, optional time, optional zone.
_DATE = re.compile(
    r"(\d{4})-(\d\d)-(\d\d)"
    r"(?:[Tt ](\d\d):(\d\d)(?::(\d\d)(?:\.(\d{1,9}))?)?([Zz]|[+ -]\d\d:\d\d)?)?\Z"
)


def _instant(text):
    """The UTC instant of a date parameter, or None when it is not one."""
    m = _DATE.match(text) if isinstance(text, str) else None
    if m is None:
        return None
    year, month, day, hour, minute, second, fraction, zone = m.groups()
    try:
        t = datetime(
            int(year), int(month), int(day), int(hour or 0), int(minute or 0),
            int(second or 0), int((fraction or "0").ljust(6, "0")[:6]),
        )
    except ValueError:
        return None
    if zone and zone not in "Zz":
        sign = -1 if zone[0] == "-" else 1
        t -= sign * timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6]))
    return t.replace(tzinfo=timezone.utc)


def _positive(case):
    meta = getattr(case, "meta", None)
    return meta is not None and meta.generation.mode.is_positive


@schemathesis.hook
def map_case(context, case):
    if not _positive(case) or case.query is None:
        return case
    query = case.query
    if case.path == "/api/events":
        # `new_value` only together with `attribute_name`.
        if "new_value" in query and "attribute_name" not in query:
            query["attribute_name"] = "status"
        # `date` not after `date_to`, at most the period apart (a second of margin: the
        # instants here are read to the microsecond only). `date_to` = `date` is an empty,
        # valid window.
        start, end = query.get("date"), query.get("date_to")
        if start is not None and end is not None:
            try:
                a, b = _instant(start), _instant(end)
                fine = a is not None and b is not None and (
                    timedelta(0) <= b - a <= PERIOD - timedelta(seconds=1)
                )
            except OverflowError:
                fine = False
            if not fine:
                query["date_to"] = start
    return case
