from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator

import pytest

from .receiver import Receiver

SECRET = "s3cret-webhook-key-0123456789abcdef"


@pytest.fixture
def secret_file(tmp_path: Path) -> str:
    p = tmp_path / "webhook.secret"
    p.write_text(SECRET + "\n")
    os.chmod(p, 0o600)
    return str(p)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver(SECRET).start()
    yield r
    r.stop()


def hook(receiver: Receiver, secret_file: str, **over: Any) -> dict[str, Any]:
    """One [[webhook]] table for ``receiver``: every event, fast retries."""
    return {"name": "helpdesk", "url": receiver.url, "secret_file": secret_file,
            "events": ["ticket.created", "article.added", "ticket.updated", "message.quarantined",
                       "notification.failed"],
            "backoff_initial": "50ms", "backoff_max": "200ms", "timeout": "5s", **over}
