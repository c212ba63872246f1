"""Domain names as config and DNS use them: lower-case A-labels (IDNA 2008 / UTS 46), no trailing dot."""
from __future__ import annotations


def to_ascii_domain(name: str) -> str:
    """Lower-case A-label form of a domain (IDNA 2008/UTS 46 via ``idna`` when installed,
    else Python's IDNA 2003 codec); no trailing dot. Raises ValueError when not convertible."""
    name = name.strip().rstrip(".")
    if not name:
        raise ValueError("empty domain")
    try:
        name.encode("ascii")
        return name.lower()
    except UnicodeEncodeError:
        pass
    try:
        import idna  # type: ignore

        return idna.encode(name, uts46=True).decode("ascii").lower()
    except ImportError:  # pragma: no cover - idna ships with dnspython's extras on most systems
        pass
    except Exception as e:  # idna.IDNAError and friends
        try:
            return name.encode("idna").decode("ascii").lower()
        except UnicodeError:
            raise ValueError(f"not a valid IDN: {e}") from None
    try:
        return name.encode("idna").decode("ascii").lower()
    except UnicodeError as e:
        raise ValueError(f"not a valid IDN: {e}") from None
