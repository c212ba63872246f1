"""The [[source]] keys of the graph and pop3 kinds and of `source authorize`: values and errors naming the key."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from gateway.config.errors import ConfigErrors
from gateway.config.load import build_config

from tests.conftest import BASE_CONFIG, merge


def load(tmp_path: Path, **src: Any) -> Any:
    return build_config(merge(BASE_CONFIG, {"store": {"url": f"sqlite:///{tmp_path}/t.db"}, "source": [src]}), "test")


def errors(tmp_path: Path, **src: Any) -> str:
    with pytest.raises(ConfigErrors) as exc:
        load(tmp_path, **src)
    return "\n".join(str(e) for e in exc.value.errors)


def secret(tmp_path: Path, value: str = "x") -> str:
    p = tmp_path / f"s{len(os.listdir(tmp_path))}"
    p.write_text(value + "\n")
    p.chmod(0o600)
    return str(p)


GRAPH = {"name": "g", "kind": "graph", "mailbox": "support@example.test", "tenant": "t1", "user": "u@x.test",
         "oauth_client_id": "cid"}


def test_graph_national_cloud_derives_token_url_and_scope(tmp_path: Path) -> None:
    sc = load(tmp_path, **GRAPH, oauth_client_secret_file=secret(tmp_path), endpoint="https://graph.microsoft.us",
              authority="https://login.microsoftonline.us").sources[0]
    assert sc.oauth.token_url == "https://login.microsoftonline.us/t1/oauth2/v2.0/token"
    assert sc.oauth.scope == "https://graph.microsoft.us/.default"
    assert sc.folder == "inbox" and sc.auth == "xoauth2"


def test_draft_may_name_a_refresh_token_file_not_written_yet(tmp_path: Path) -> None:
    missing = str(tmp_path / "later.refresh")
    sc = load(tmp_path, **GRAPH, status="draft", oauth_refresh_token_file=missing).sources[0]
    assert sc.oauth.refresh_token_file == missing and sc.oauth.refresh_token == ""
    assert "source[0].oauth_refresh_token_file" in errors(tmp_path, **GRAPH, oauth_refresh_token_file=missing)


def test_kind_specific_keys_are_refused_elsewhere(tmp_path: Path) -> None:
    imap = {"name": "i", "kind": "imap", "mailbox": "support@example.test", "host": "127.0.0.1", "username": "u",
            "password_file": secret(tmp_path)}
    assert "source[0].delete_after_import: only used with kind = \"pop3\"" in errors(tmp_path, **imap,
                                                                                    delete_after_import=True)
    assert "source[0].authority: only used with kind = \"graph\"" in errors(tmp_path, **imap,
                                                                          authority="https://login.x.test")
    assert "source[0].oauth_device_url: only used with auth = \"xoauth2\"" in errors(
        tmp_path, **imap, oauth_device_url="https://idp.x.test/device")


def test_pop3_has_no_folders(tmp_path: Path) -> None:
    pop = {"name": "p", "kind": "pop3", "mailbox": "support@example.test", "host": "127.0.0.1", "username": "u",
           "password_file": secret(tmp_path)}
    sc = load(tmp_path, **pop, delete_after_import=True, idle=False).sources[0]
    assert sc.delete_after_import and sc.port == 995 and sc.success_folder == ""
    assert "source[0].success_folder: POP3 has no folders" in errors(tmp_path, **pop, success_folder="Done")
    assert "source[0].delete_after_import" in errors(tmp_path, **pop, delete_after_import="yes")
