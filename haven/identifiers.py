"""When two names a person typed are the same name: a defender's pseudonym, an identity provider's
subject, an organisation's id.

An adversary (or a tired intermediary) writes the same name another way: fullwidth letters, a
zero-width space, a Unicode hyphen, a Cyrillic letter that looks Latin, another case. Each of those
would otherwise be a new defender (escaping the cap and the prior-grant points) or a new person
(counting twice for four eyes). `canonical` folds them all to one string:

1. NFKC, so compatibility forms (fullwidth, ligatures, non-breaking hyphen) become plain ones;
2. case folding, and every decimal digit of any script (Arabic-Indic, Persian, Devanagari…)
   written as its ASCII digit;
3. default-ignorable code points removed (zero-width spaces and joiners, soft hyphens, variation
   selectors: invisible, so never a difference a person meant);
4. runs of white space collapsed to one space, none at either end;
5. the confusables skeleton of Unicode TS #39 (ICU's SpoofChecker, the reference implementation,
   with the confusables data of its Unicode version), so look-alikes from other scripts, dashes
   and digits that read as letters (`0` and `O`, `1` and `l`) become one;
6. NFKC and case folding once more, since a skeleton may map to capitals.

The result is only ever compared or hashed, never shown: it is deliberately lossy, and two names
that differ only in ways a reader could not see are the same name."""

from __future__ import annotations

import unicodedata
from functools import lru_cache

import icu

_IGNORABLE = icu.UnicodeSet("[:Default_Ignorable_Code_Point:]")
_IGNORABLE.freeze()
_SPOOF = icu.SpoofChecker()

# A change of these rules, or of the Unicode data behind them (the pinned ICU of pyicu-wheels),
# changes every keyed hash made from a canonical name: it needs a migration that hashes the stored
# pseudonyms again, as 0007 did.


def _visible(text: str) -> str:
    return "".join(ch for ch in text if not _IGNORABLE.contains(ch))


def _ascii_digits(text: str) -> str:
    return "".join(str(unicodedata.decimal(ch)) if unicodedata.decimal(ch, None) is not None else ch for ch in text)


@lru_cache(maxsize=4096)
def canonical(text: str) -> str:
    folded = " ".join(_ascii_digits(_visible(unicodedata.normalize("NFKC", text).casefold())).split())
    skeleton = _SPOOF.getSkeleton(0, folded)
    return " ".join(unicodedata.normalize("NFKC", skeleton).casefold().split())


def same(a: str | None, b: str | None) -> bool:
    """Whether two names are the same name (None is never the same as anything)."""
    return a is not None and b is not None and canonical(a) == canonical(b)


def person_key(issuer: str, subject: str) -> str:
    """Who a person is: their identity provider and the canonical name of their subject there.
    OpenID Connect says a subject is compared exactly; here two subjects that read the same are one
    person, so that no one can count twice (or escape a conflict) by changing the case of a letter
    or adding an invisible one. The roster refuses to hold two such subjects as different people."""
    return f"{issuer}|{canonical(subject)}"
