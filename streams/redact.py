"""Redaction of personal data in event text before anything is stored, published or logged.

Operators configure a list of (name, regex, replacement) patterns (``privacy.redact_patterns``); the
defaults replace e-mail addresses with ``<email>`` and phone numbers with ``<phone>``. All patterns
are compiled into one alternation, so an utterance is scanned once whatever the number of patterns,
and the replacement is inserted literally (no ``\\1`` templates). Ingest applies it to an
utterance's ``text``, to every string inside ``meta`` and to every string in unknown
(producer-added) fields; the model therefore sees, predicts on and is trained on the redacted text.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

__all__ = ["DEFAULT_PATTERNS", "EMAIL_REGEX", "PHONE_REGEX", "Redactor", "check_pattern"]

# Starts only where a local part can start (not inside a word), so a long run of word characters is
# scanned once, not once per position. Unicode letters count (\w): "jörg@例子.中国" is an address.
EMAIL_REGEX = (
    r"(?<![\w.%+\-])[\w%+\-]++(?:\.[\w%+\-]++)*+@[\w\-]+(?:\.[\w\-]+)*\.[^\W\d_]{2,}(?![\w\-]|\.\w)"
)

# Phone numbers in the common national and international notations, verbose so it can be read in
# config.toml. A match needs at least 7 digits; plain numbers (order ids, amounts, years, versions)
# and dates are left alone: a digit run without separators is a phone number only with 10 or 11
# digits (or after + or 00), two runs only after a 0 trunk prefix, and shapes like 2024-01-15,
# 15.01.2024 or 1.250.000 are refused by the look-aheads. Possessive quantifiers (++, {m,n}+)
# keep it linear: a failed candidate is never re-split into other groupings of its digits.
PHONE_REGEX = r"""(?x:
  (?<![\w+.,/\-])                                # not inside a word, number, date or path
  (?=[+(]?(?:[ .\-()/]{0,3}\d){7})               # at least 7 digits ahead
  (?!\d{1,4}[.\-/]\d{1,2}[.\-/]\d{2,4}(?!\d))    # not a date: 2024-01-15, 15.01.2024, 1/2/2024
  (?!\d{1,3}(?:[.,]\d{3})++(?![.,]?\d))          # not an amount with separators: 1.250.000
  (?:
      (?:\+|00)\d++                              # intl: +44 20 7946 0958, +44 (0)20 7946 0958
      (?:(?:[ .\-/]|[ .\-]?\(\d{1,4}\)[ .\-]?)\d++){0,6}+
    | \(\d{2,5}\)[ .\-]?\d++(?:[ .\-]\d++){0,3}+ # (555) 123-4567, (020) 7946 0958
    | \d{2,5}+(?:[ .\-]\d{2,5}+){2,5}+           # 555-123-4567, 020 7946 0958, 01 23 45 67 89
    | 0\d{1,4}+[ .\-/]\d{4,9}+                   # trunk prefix: 07911 123456, 030/1234567
    | \d{10,11}+                                 # a bare run: 5551234567, 07911123456
  )
  (?![\w@]|[.\-/]\d)                             # and not continued by more of a word or number
)"""

DEFAULT_PATTERNS: tuple[tuple[str, str, str], ...] = (
    ("email", EMAIL_REGEX, "<email>"),
    ("phone", PHONE_REGEX, "<phone>"),
)

# What a text needs for the shipped patterns to match in it, tested before the regex runs: most
# utterances have no "@" and fewer than 7 digits, and these tests cost a fraction of the scan.
_SEVEN_DIGITS = re.compile(r"\d(?:\D*+\d){6}")
_NECESSARY: dict[str, Callable[[str], bool]] = {
    EMAIL_REGEX: lambda text: "@" in text,
    PHONE_REGEX: lambda text: _SEVEN_DIGITS.search(text) is not None,
}
# JSON leaves that hold no text
_NO_TEXT = (type(None), bool, int, float)

# A numbered back-reference (\1 .. \99) would point at another group once the patterns are combined.
_NUMBERED_BACKREF = re.compile(r"(?<!\\)(?:\\\\)*\\[1-9]")


def check_pattern(regex: str) -> re.Pattern[str]:
    """Compile one configured pattern as it will run
    inside the combined one; ValueError says why not."""
    if _NUMBERED_BACKREF.search(regex):
        raise ValueError(
            r"uses a numbered back-reference (\1 ...); the patterns are combined "
            r"into one regex, so use a named group and (?P=name)"
        )
    try:
        compiled = re.compile(f"({regex})")
    except re.error as exc:
        hint = (
            " (use a scoped flag such as (?i:...) instead of a global (?i))"
            if "global flags" in str(exc)
            else ""
        )
        raise ValueError(f"does not compile: {exc}{hint}") from None
    if compiled.fullmatch(""):
        raise ValueError("matches the empty string, so it would insert its replacement everywhere")
    return compiled


class Redactor:
    """Replaces every match of the configured patterns;
    returns its input object itself when nothing matched."""

    def __init__(self, patterns: Iterable[tuple[str, str, str]]) -> None:
        self.names: list[str] = []
        parts: list[str] = []
        self._replacements: dict[int, str] = {}
        group = 1
        # None: some pattern has no cheap precondition, so every text is scanned
        necessary: list[Callable[[str], bool]] | None = []
        for name, regex, replacement in patterns:
            try:
                groups = check_pattern(regex).groups  # its own groups + the wrapper
            except ValueError as exc:
                raise ValueError(f"pattern {name!r} ({regex!r}) {exc}") from None
            if name in self.names:
                raise ValueError(f"two patterns are named {name!r}")
            self.names.append(name)
            # The wrapper group closes after any group inside it, so it is match.lastindex.
            self._replacements[group] = replacement
            parts.append(f"({regex})")
            group += groups
            if necessary is not None and regex in _NECESSARY:
                necessary.append(_NECESSARY[regex])
            else:
                necessary = None
        self._necessary = tuple(necessary) if necessary is not None else None
        self.enabled = bool(parts)
        try:
            self._pattern = re.compile("|".join(parts)) if parts else None
        except re.error as exc:  # e.g. two patterns use the same group name
            raise ValueError(
                f"the patterns {', '.join(map(repr, self.names))} do not combine "
                f"into one regex: {exc}"
            ) from None

    def _replace(self, match: re.Match[str]) -> str:
        return self._replacements[match.lastindex or 0]

    def text(self, text: str) -> str:
        if self._pattern is None:
            return text
        if self._necessary is not None:
            for can_match in self._necessary:
                if can_match(text):
                    break
            else:
                return text  # the common case: no pattern can match, no scan
        if self._pattern.search(text) is None:
            return text  # one scan, no copy
        return self._pattern.sub(self._replace, text)

    def value(self, value: Any) -> Any:
        """Strings inside a JSON-like value (dict values, list items; keys are kept)."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, _NO_TEXT):
            return value
        if isinstance(value, Mapping):
            changed: dict[Any, Any] | None = None
            for k, v in value.items():
                if not isinstance(v, _NO_TEXT) and (redacted := self.value(v)) is not v:
                    changed = changed if changed is not None else dict(value)
                    changed[k] = redacted
            return changed if changed is not None else value
        if isinstance(value, list):
            items = [self.value(v) for v in value]
            return items if any(a is not b for a, b in zip(items, value, strict=True)) else value
        return value

    def event_updates(
        self, fields: Mapping[str, Any], extra: Mapping[str, Any] | None
    ) -> dict[str, Any]:
        """The redacted free-text fields of one event
        (``text``, ``meta``, unknown fields) that changed."""
        if self._pattern is None:
            return {}
        updates: dict[str, Any] = {}
        text = fields.get("text")
        if text is not None and (redacted := self.text(text)) is not text:
            updates["text"] = redacted
        meta = fields.get("meta")
        if meta and (redacted := self.value(meta)) is not meta:
            updates["meta"] = redacted
        if extra:
            for key, value in extra.items():
                if (redacted := self.value(value)) is not value:
                    updates[key] = redacted
        return updates
