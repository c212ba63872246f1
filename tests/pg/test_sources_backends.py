"""The pull-source suite against a real Dovecot (tests/sources/), unchanged, on both backends: the
``start_gateway`` of tests/pg/conftest.py (sqlite and postgres) replaces the SQLite-only one."""
from __future__ import annotations

from ..smarthost import sink  # noqa: F401 - the fixture
from ..sources.dovecot import dovecot  # noqa: F401 - the fixture
from ..sources.test_imap_source import (  # noqa: F401 - collected by pytest
    test_imports_and_settles_into_folders, test_provider_verdict_only_from_a_trusted_authserv_id_and_no_spf)
from ..sources.test_source_failures import (  # noqa: F401 - collected by pytest
    test_a_refused_message_is_quarantined_to_the_failure_folder_and_the_rest_goes_on,
    test_stop_after_failures_pauses_only_that_source_and_tells_the_admin,
    test_uidvalidity_change_imports_nothing_twice_and_since_is_honoured)
