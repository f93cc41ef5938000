"""What Alertmanager accepts as a silence's matchers, checked before it is ever asked.

The rules are those of Alertmanager's own validation (``silence/silence.go``, 0.25): a label
name as Prometheus defines it, a value that is valid UTF-8, a regular expression that Go's
``regexp`` (RE2 syntax) compiles, and at least one matcher that does not match the empty string
(an ``=`` with an empty value or a ``=~`` whose regex matches ``""``). Checked at start-up, a
matcher that could never work refuses the configuration instead of failing in a failover. RE2
itself (google-re2) compiles the expressions, so the check does not drift from Go's syntax.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import re2

from az_agent.drivers.alerts.base import Matcher

EVERY_ALERT = Matcher("alertname", ".+", is_regex=True)
"""The matcher used when none is configured: every alert has a non-empty ``alertname``."""

_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


def _compile(pattern: str) -> re2._Regexp:
    options = re2.Options()
    options.log_errors = False  # the error comes back in the exception, not on stderr
    return re2.compile(pattern, options)


def _problem(matcher: Matcher) -> str | None:
    """Why Alertmanager would reject ``matcher`` on its own, or ``None``."""
    if not _LABEL_NAME.fullmatch(matcher.name):
        return f"invalid label name {matcher.name!r}"
    try:
        matcher.value.encode("utf-8")
    except UnicodeEncodeError:
        return f"label value {matcher.value!r} is not valid UTF-8"
    if matcher.is_regex:
        try:
            _compile(matcher.value)
        except re2.error as exc:
            reason = exc.args[0] if exc.args else exc
            if isinstance(reason, bytes):
                reason = reason.decode("utf-8", "replace")
            return f"invalid regular expression {matcher.value!r}: {reason}"
    return None


def _matches_empty(matcher: Matcher) -> bool:
    """Alertmanager's ``matchesEmpty``: only ``=`` and ``=~`` count (unanchored search)."""
    if not matcher.is_equal:
        return False
    if matcher.is_regex:
        return _compile(matcher.value).search("") is not None
    return matcher.value == ""


def check_matchers(matchers: Sequence[Matcher]) -> None:
    """Raise ``ValueError`` with Alertmanager's reason when it would reject a silence made of
    ``matchers``; an empty sequence is fine (the driver then uses :data:`EVERY_ALERT`)."""
    for index, matcher in enumerate(matchers):
        problem = _problem(matcher)
        if problem is not None:
            raise ValueError(f"matcher {index}: {problem}")
    if matchers and all(_matches_empty(m) for m in matchers):
        raise ValueError("at least one matcher must not match the empty string")
