"""Container ids and names, and finding a container the way Docker does.

Docker resolves a reference in this order: full 64-hex id, exact name,
unique id prefix. Names are stored without the leading "/" that
`docker inspect` shows (a relic of Docker's links tree).
"""
from __future__ import annotations

import random
import re
import secrets
from typing import Mapping

from labkit.engine.errors import Conflict, Invalid, NotFound

VALID_NAME_CHARS = "[a-zA-Z0-9][a-zA-Z0-9_.-]"
_VALID_NAME = re.compile(r"^/?" + VALID_NAME_CHARS + r"+$")
_FULL_ID = re.compile(r"^[0-9a-f]{64}$")

# adjective_surname, as Docker's namesgenerator (our own short lists).
ADJECTIVES = (
    "admiring", "bold", "brave", "calm", "clever", "eager", "elated", "focused",
    "gentle", "happy", "jolly", "keen", "kind", "lucid", "nifty", "patient",
    "quirky", "serene", "sharp", "stoic", "tender", "vibrant", "wizardly", "zealous",
)
SURNAMES = (
    "bell", "curie", "darwin", "euler", "fermi", "gauss", "hopper", "hypatia",
    "kepler", "knuth", "lamarr", "liskov", "lovelace", "meitner", "noether", "pike",
    "ritchie", "shannon", "thompson", "torvalds", "turing", "wing", "wozniak", "yalow",
)


def new_id() -> str:
    """A random 64-hex container id whose 12-char short form is not all digits.

    An all-digit short id could be read as a number by tools (Docker's
    stringid rule), so we draw again.
    """
    while True:
        cid = secrets.token_hex(32)
        if not cid[:12].isdigit():
            return cid


def short_id(cid: str) -> str:
    """The 12-char form `docker ps` shows."""
    return cid[:12]


def is_full_id(ref: str) -> bool:
    return bool(_FULL_ID.match(ref))


def random_name(retry: int = 0, rng: random.Random | None = None) -> str:
    """'focused_turing'; on retries a digit is appended, as Docker does."""
    r = rng or random
    while True:
        name = f"{r.choice(ADJECTIVES)}_{r.choice(SURNAMES)}"
        if name != "boring_wozniak":  # Docker's one rule: Steve Wozniak is not boring
            break
    return name + (str(r.randrange(10)) if retry > 0 else "")


def validate_name(name: str) -> str:
    """The stored form of a user-given name (no leading "/"), or Invalid."""
    if not _VALID_NAME.match(name):
        raise Invalid(f"Invalid container name ({name}), only {VALID_NAME_CHARS} are allowed",
                      "names start with a letter or digit and are at least 2 characters")
    return name.lstrip("/")


def inspect_name(name: str) -> str:
    """The Name field of `docker inspect`: with its leading slash."""
    return "/" + name.lstrip("/")


def name_conflict(name: str, owner_id: str) -> Conflict:
    return Conflict(
        f'Conflict. The container name "{inspect_name(name)}" is already in use by container '
        f'"{owner_id}". You have to remove (or rename) that container to be able to reuse that name.')


def resolve(ref: str, names: Mapping[str, str]) -> str:
    """The id `ref` means, given {id: name} for every container.

    Order as Docker's daemon.GetContainer: full id, then name, then unique
    id prefix. Unknown → NotFound; ambiguous prefix → Invalid.
    """
    if not ref:
        raise Invalid('invalid name or ID supplied: ""')
    if ref in names:
        return ref
    bare = ref.lstrip("/")
    for cid, name in names.items():
        if name == bare:
            return cid
    hits = [cid for cid in names if cid.startswith(ref)]
    if len(hits) > 1:
        raise Invalid(f"multiple IDs found with provided prefix: {ref}",
                      "give more characters of the id, or the container's name")
    if not hits:
        raise NotFound(f"No such container: {ref}")
    return hits[0]
