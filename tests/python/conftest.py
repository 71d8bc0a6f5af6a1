"""pytest hooks for the Consul-client tests: remember a failure so the meshd fixture can show
meshd's log when it tears down."""

import pytest


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    if outcome.get_result().failed:
        item.session.meshd_failed = True
