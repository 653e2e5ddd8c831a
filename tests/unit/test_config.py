import pytest

from tollhouse.config import load_text
from tollhouse.config.loader import expand_env
from tollhouse.config.schema import parse_duration, parse_size

BASE = """
upstreams:
  u: {targets: ["http://127.0.0.1:9001", {url: "http://127.0.0.1:9002", weight: 3}]}
routes:
  - {match: {prefix: /}, upstream: u}
"""


@pytest.mark.parametrize("text,seconds", [("250ms", 0.25), ("10s", 10), ("5m", 300), ("1h", 3600), ("1d", 86400),
                                          (3, 3.0), ("1.5s", 1.5)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["10", "s", "-1s", "1w", True])
def test_bad_durations(bad):
    with pytest.raises(ValueError):
        parse_duration(bad)


@pytest.mark.parametrize("text,size", [("512", 512), (512, 512), ("16KiB", 16384), ("10MiB", 10 << 20), ("1GiB", 1 << 30)])
def test_sizes(text, size):
    assert parse_size(text) == size


def test_env_expansion_with_defaults():
    env = {"A": "x", "EMPTY": ""}
    assert expand_env("${A}-${B:-dflt}-${EMPTY:-e}", env) == "x-dflt-e"
    with pytest.raises(KeyError):
        expand_env("${MISSING}", env)


def test_valid_config_is_frozen_with_defaults(monkeypatch):
    monkeypatch.setenv("W", "3")
    config, errors = load_text("workers: ${W}\n" + BASE)
    assert errors == []
    assert config.workers == 3
    assert config.limits.max_header_bytes == 16 * 1024
    assert config.upstreams["u"].targets[1].weight == 3
    with pytest.raises(AttributeError):
        config.workers = 4
    with pytest.raises(TypeError):
        config.upstreams["v"] = None


def test_every_error_is_reported_with_path_and_line():
    config, errors = load_text("""
listen: nowhere:port
limits:
  max_body_bytes: lots
  idle_timeout: 5x
upstreams:
  u: {targets: ["http://127.0.0.1:9001"], balancer: random}
routes:
  - {match: {prefix: /}, upstream: u, timout: 5s}
""")
    assert config is None
    text = [str(e) for e in errors]
    assert any(t.startswith("listen[0] (line 2)") for t in text), text
    assert any(t.startswith("limits.max_body_bytes (line 4)") for t in text), text
    assert any(t.startswith("limits.idle_timeout (line 5)") for t in text), text
    assert any(t.startswith("upstreams.u.balancer (line 7)") for t in text), text
    assert any(t.startswith("routes[0].timout (line 9)") and "did you mean 'timeout'" in t for t in text), text


def test_cross_references_are_checked():
    _, errors = load_text("""
upstreams:
  u: {targets: ["http://127.0.0.1:9001"]}
routes:
  - {name: a, match: {prefix: /}, upstream: nope}
  - {name: a, match: {path: "/x/{id}"}, upstream: u, rewrite: "/y/{other}", policies: [ghost]}
""")
    text = "\n".join(map(str, errors))
    assert "routes[0].upstream (line 5): no upstream named 'nope'" in text
    assert "duplicate route name 'a'" in text
    assert "{other} is not a variable of match.path" in text
    assert "routes[1].policies[0] (line 6): no policy named 'ghost'" in text


def test_duplicate_yaml_keys_and_missing_env_are_errors():
    _, errors = load_text("workers: 1\nworkers: 2\nstore: ${TOLLHOUSE_SURELY_UNSET_VAR}\n" + BASE)
    text = "\n".join(map(str, errors))
    assert "duplicate key 'workers'" in text and "line 2" in text
    assert "TOLLHOUSE_SURELY_UNSET_VAR is not set" in text


def test_invalid_yaml_names_the_line():
    _, errors = load_text("routes:\n  - match: {prefix: /a\n  - x: y\n")
    assert errors and errors[0].line is not None and "invalid YAML" in str(errors[0])


def test_global_limits_need_regions_and_regions_need_redis():
    _, errors = load_text(BASE.replace("upstream: u}", "upstream: u, rate_limits: [{limit: 5, scope: global}]}"))
    assert any("routes[0].rate_limits[0].scope" in str(e) and "needs the top-level `regions`" in str(e)
               for e in errors)
    _, errors = load_text(BASE + "regions: {name: eu, peers: {us: redis://127.0.0.1:1/0}}\n")
    assert any(str(e).startswith("regions") and "Redis" in str(e) for e in errors)
    _, errors = load_text(BASE.replace("upstream: u}", "upstream: u, rate_limits: [{limit: 5, scope: global, "
                                                       "algorithm: token_bucket}]}"))
    assert any("rate_limits[0].scope" in str(e) and "token bucket" in str(e) for e in errors)


def test_escrow_needs_a_global_fixed_window():
    _, errors = load_text(BASE.replace("upstream: u}", "upstream: u, rate_limits: [{limit: 5, mode: escrow}]}"))
    assert any("rate_limits[0].mode" in str(e) and "scope: global" in str(e) for e in errors)
    _, errors = load_text(BASE.replace("upstream: u}", "upstream: u, rate_limits: [{limit: 5, scope: global, "
                                                       "mode: escrow, algorithm: sliding_window}]}"))
    assert any("rate_limits[0].mode" in str(e) and "fixed_window" in str(e) for e in errors)
    _, errors = load_text(BASE.replace("upstream: u}", "upstream: u, rate_limits: [{limit: 5, scope: global, "
                                                       "mode: escrowed}]}"))
    assert any("rate_limits[0].mode" in str(e) for e in errors)


def test_templates_keep_a_question_mark_after_a_variable():
    config, errors = load_text(BASE.replace("{match: {prefix: /}, upstream: u}",
                                            '{match: {path: "/x/{id}"}, upstream: u, rewrite: /y/{id}?v={id}}'))
    assert errors == [] and config.routes[0].rewrite == "/y/{id}?v={id}"
    config, errors = load_text(BASE.replace("{match: {prefix: /}, upstream: u}",
                                            '{match: {path: "/x/{id}"}, aggregate: {backends: '
                                            '{a: {upstream: u, path: /y/{id}?who={consumer}}}}}'))
    assert errors == [], errors
    assert config.routes[0].aggregate.backends["a"].path == "/y/{id}?who={consumer}"


def test_cache_keys_are_validated():
    config, errors = load_text(BASE.replace("upstream: u}", "upstream: u, cache: {ttl: 30s, vary: [Accept-Language], "
                                                             "scope: consumer, stale_if_error: 1m}}"))
    assert not errors and config.routes[0].cache.ttl == 30 and config.routes[0].cache.stale_if_error == 60
    _, errors = load_text(BASE.replace("upstream: u}", "upstream: u, cache: {scope: everyone, ttl: -1s}}")
                          + "cache: {memory_size: 1, storage: disk}\n")
    text = "\n".join(map(str, errors))
    for key in ("routes[0].cache.scope", "routes[0].cache.ttl", "cache.memory_size", "cache.storage"):
        assert key in text, key


def test_yaml_keys_like_on_stay_names():
    config, errors = load_text(BASE.replace('"http://127.0.0.1:9001", ', '"http://127.0.0.1:9001", ').replace(
        "u: {targets:", "u: {retries: {attempts: 3, on: [502, connect_error]}, targets:"))
    assert errors == []
    assert config.upstreams["u"].retries.on == ("502", "connect_error")


def test_env_references_work_inside_flow_mappings(monkeypatch):
    monkeypatch.setenv("TH_TEST_TOKEN", "s3cret")
    config, errors = load_text("admin: {listen: 127.0.0.1:9901, token: ${TH_TEST_TOKEN}}\n"
                               "limits: {max_body_bytes: ${TH_TEST_UNSET_SIZE:-1MiB}}\n" + BASE)
    assert errors == []
    assert config.admin.token == "s3cret" and config.limits.max_body_bytes == 1 << 20


def test_the_contract_example_config_parses(monkeypatch):
    """docs/contract.md §2's example: every key is known (it names files, modules and upstreams
    that are not here, so those are reported, and nothing else)."""
    import os
    import re

    path = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "contract.md")
    text = open(path, encoding="utf-8").read()
    example = re.search(r"```yaml\n(.*?)```", text, re.S).group(1)
    monkeypatch.setenv("JWT_SECRET", "x")
    monkeypatch.setenv("S", "y")
    _, errors = load_text(example)
    messages = [str(e) for e in errors]
    assert not [m for m in messages if "invalid YAML" in m or "unknown key" in m or "not available" in m], messages


def test_the_regions_page_examples_parse():
    """docs/regions.md: the locality example (zones included), the regions example, and the
    escrow limit (set on that example's route) are valid as written."""
    import os
    import re

    path = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "regions.md")
    blocks = re.findall(r"```yaml\n(.*?)```", open(path, encoding="utf-8").read(), re.S)
    locality, regions, escrow = blocks
    _, errors = load_text(locality + "routes:\n  - {match: {prefix: /}, upstream: orders}\n")
    assert errors == [], errors
    escrow_line = escrow.strip()
    assert escrow_line.startswith("rate_limits: ")
    with_escrow = re.sub(r"rate_limits: \[.*\]", escrow_line, regions)
    assert "mode: escrow" in with_escrow
    for text in (regions, with_escrow):
        _, errors = load_text(text + "upstreams:\n  app: {targets: [\"http://127.0.0.1:9001\"]}\n")
        assert errors == [], errors
