"""tests/packaging builds the sdist, the wheel and the .debs from the tree it runs in. In the
mutation gate's scratch copy (tests/mutation/run.py) that tree holds firsttrust/agent,
firsttrust/requester and firsttrust/lab links to its own folders, so that the copy imports its
own code; a package built from it would ship each module twice. No mutation row guards a promise
with these tests: in a scratch copy they are skipped, by name, not failed."""

import os

import pytest


def pytest_collection_modifyitems(config, items):
    if not os.environ.get("FIRSTTRUST_EXPECT_TREE"):
        return
    skip = pytest.mark.skip(reason="packaging builds from the real tree, not a mutation gate's scratch copy")
    here = os.path.dirname(__file__)
    for item in items:
        if str(item.fspath).startswith(here + os.sep):
            item.add_marker(skip)
