"""The registry: what the top installs, the phase order, noted headers, sections (no gateway)."""
import pytest

from tollhouse import builtins, registry
from tollhouse.config.schema import Field, Str
from tollhouse.registry import NotedHeader, PolicyKind, Section


@pytest.fixture
def reinstall():
    """A test may install its own kinds; the built-ins are back afterwards."""
    yield
    builtins.install()


def _kind(name, **declared):
    return PolicyKind(name, phase=declared.pop("phase", "access"), build=lambda config, context, services: None,
                      **declared)


def test_the_builtins_install_their_kinds_sections_protocols_and_phases():
    parts = builtins.install()
    assert [k.name for k in parts.kinds][:3] == ["auth", "ratelimit", "cache"]
    assert {"auth", "consumers", "tiers", "regions", "cache", "ip", "tls", "http2", "tracing", "debug"} <= {
        s.key for s in parts.sections}
    assert [p.name for p in parts.protocols] == ["http1", "h2c", "http2", "grpc"]
    # GraphQL adds its own phase: its operation is read after auth, before the rate limits.
    assert registry.phases() == builtins.PHASES[:4] + ("operation",) + builtins.PHASES[4:]
    assert registry.request_values("key") == {"graphql_operation": registry.request_values("key")["graphql_operation"]}
    assert set(registry.request_values("cost")) == {"graphql_cost"}
    assert registry.installed() is parts


def test_a_kind_adds_a_phase_after_another(reinstall):
    audit = _kind("audit", phase="audit", new_phase=("audit", "auth"))
    registry.install((*builtins.KINDS, audit), builtins.SECTIONS, builtins.PROTOCOLS, builtins.PHASES)
    order = registry.phases()
    assert order.index("auth") + 1 == order.index("audit") == order.index("operation") - 1


def test_a_phase_that_is_not_declared_is_refused(reinstall):
    with pytest.raises(ValueError, match="no phase"):
        registry.install((_kind("lost", phase="nowhere"),), phases=builtins.PHASES)
    with pytest.raises(ValueError, match="which is no phase"):
        registry.install((_kind("lost", phase="x", new_phase=("x", "nowhere")),), phases=builtins.PHASES)


def test_noted_headers_get_one_index_each_and_merge_their_declarations(reinstall):
    a = _kind("a", headers=(NotedHeader("X-One"), NotedHeader("x-two", singleton=True)))
    b = _kind("b", headers=(NotedHeader("x-one", relayed=False),))
    parts = registry.install((a, b), (Section("s", Field(Str(), ""), headers=(NotedHeader("x-three"),)),),
                             phases=builtins.PHASES)
    assert {name: h.index for name, h in parts.headers.items()} == {"x-one": 0, "x-two": 1, "x-three": 2}
    one = parts.headers["x-one"]
    assert not one.relayed and not one.singleton   # hidden if one kind hides it
    assert parts.headers["x-two"].singleton
    assert registry.noted_index("X-TWO") == 1


def test_two_sections_or_kinds_of_one_name_are_refused(reinstall):
    section = Section("same", Field(Str(), ""))
    with pytest.raises(ValueError, match="top-level key 'same'"):
        registry.install((_kind("a", sections=(section,)), _kind("b", sections=(section,))), phases=builtins.PHASES)
    with pytest.raises(ValueError, match="registered twice"):
        registry.install((_kind("a"), _kind("a")), phases=builtins.PHASES)


def test_a_section_comes_into_the_gateway_schema_with_its_check(reinstall):
    from tollhouse.config import load_text
    from tollhouse.config.loader import ConfigError

    def check(config, errors):
        if config.greeting == "boo":
            errors.append(ConfigError("greeting", None, "be nice"))

    kind = _kind("greeter", sections=(Section("greeting", Field(Str(), "hello", "what to say"), check=check),))
    registry.install((*builtins.KINDS, kind), builtins.SECTIONS, builtins.PROTOCOLS, builtins.PHASES)
    config, errors = load_text("greeting: hi\n")
    assert not errors and config.greeting == "hi"
    config, errors = load_text("greeting: boo\n")
    assert config is None and [(e.path, e.message) for e in errors] == [("greeting", "be nice")]
    builtins.install()
    config, errors = load_text("greeting: hi\n")
    assert config is None and "unknown key 'greeting'" in str(errors[0])
