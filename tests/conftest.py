import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "src"))
sys.path.insert(0, ROOT)

import pytest  # noqa: E402

from tests.support.processes import RedisServer  # noqa: E402
from tollhouse.builtins import install  # noqa: E402

install()   # as the command line does: the registry gets the built-ins from the top


@pytest.fixture
def redis():
    """A real redis-server on an ephemeral port, for one test (it may kill and restart it)."""
    r = RedisServer().start()
    yield r
    r.cleanup()
