import os

from tollhouse.config.docs import render

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_configuration_reference_is_in_step_with_the_schema():
    with open(os.path.join(ROOT, "docs", "configuration.md")) as f:
        assert f.read() == render(), "run: python -m tollhouse.config.docs > docs/configuration.md"
