"""Request inspection with ModSecurity v3 and the OWASP Core Rule Set (docs/waf.md).

Top-level `waf:` applies to every route; a route's own `waf:` replaces it for
that route, and `waf: off` opts the route out.
"""
from __future__ import annotations

import os

from ...config.schema import Field, Int, Kind, ListOf, OneOf, Schema, Size, Str, error_at
from ...registry import PolicyKind, Section
from .engine import RulesError

_ENGINES: dict = {}   # settings repr -> Engine: a check and the build of the same config load the rules once


class Exclusion(Schema):
    rule = Field(Int(min=1), 0, "the rule id to exclude (whole, or for `target` only)")
    tag = Field(Str(), "", "exclude every rule with this tag instead (e.g. attack-sqli)")
    target = Field(Str(), "", "only for this target, e.g. ARGS:search or REQUEST_COOKIES:session")

    def check(self, path, lines, line, errors):
        if bool(self.rule) == bool(self.tag):
            error_at(errors, path, "rule", lines, line, "give a rule id or a tag")


def _is_str(value) -> bool:
    return isinstance(value, str)


class WafSettings(Schema):
    rules = Field(OneOf((_is_str, Str(choices=("crs",))), (lambda v: isinstance(v, list), ListOf(Str()))), "crs",
                  "crs (the OWASP Core Rule Set in crs_dir), or a list of SecLang rule files")
    crs_dir = Field(Str(), "/usr/share/modsecurity-crs", "where the CRS lives (its rules/ directory)")
    crs_setup = Field(Str(), "/etc/modsecurity/crs/crs-setup.conf", "the CRS's setup file, loaded before its rules")
    base_config = Field(Str(), "", "ModSecurity's base configuration (default: the distribution's recommended one)")
    paranoia = Field(Int(min=1, max=4), 1, "CRS paranoia level 1-4")
    anomaly_threshold = Field(Int(min=1), 5, "CRS inbound anomaly score that blocks")
    mode = Field(Str(choices=("block", "detect")), "block", "block (403) or detect (log and count only)")
    exclusions = Field(ListOf(Exclusion), (), "CRS rule exclusions: {rule, target} or {tag, target}")
    body_limit = Field(Size(), 128 * 1024, "the most request body bytes inspected (ModSecurity's "
                                           "SecRequestBodyNoFilesLimit); 0 = no limit")
    on_body_limit = Field(Str(choices=("reject", "pass")), "reject", "a larger body: refused (413) or passed "
                                                                     "uninspected")

    def check(self, path, lines, line, errors):
        if self.rules == "crs" and not os.path.isdir(self.crs_dir):
            error_at(errors, path, "crs_dir", lines, line, f"cannot read {self.crs_dir!r} (Debian: modsecurity-crs)")
            return
        if self.rules == "crs" and not os.path.exists(self.crs_setup):
            error_at(errors, path, "crs_setup", lines, line, f"cannot read {self.crs_setup!r}")
            return
        try:
            engine_for(self)
        except RulesError as e:
            key = "exclusions" if str(e).startswith("exclusion") else "rules"
            error_at(errors, path, key, lines, line, str(e))
        except ImportError:
            error_at(errors, path, "rules", lines, line, "the libmodsecurity package is not installed")


def engine_for(settings):
    """The loaded rules of `settings` (one Engine per distinct settings, kept while used)."""
    from .engine import Engine

    key = repr(settings)
    engine = _ENGINES.get(key)
    if engine is None:
        if len(_ENGINES) >= 16:
            _ENGINES.clear()   # old versions' rules: the config versions holding them keep their own
        engine = _ENGINES[key] = Engine(settings)
    return engine


def _off(value) -> bool:
    return value is False or value == "off"


class _Off(Kind):
    label = "off"

    def validate(self, value, path, line, errors):
        return False


def _build(config, context, services):
    from .policy import WafPolicy

    settings = services.config.waf if config is None else config
    if settings is None or settings is False:
        return None
    return WafPolicy(settings, context, engine_for(settings))


KIND = PolicyKind(
    "waf", phase="inspect", key="waf", build=_build, outcome="waf", log_fields=("waf_rules", "waf_score"),
    field=Field(OneOf((_off, _Off()), (lambda v: isinstance(v, dict), WafSettings)), None,
                "the route's own WAF settings (replacing the top-level `waf`), or off; see docs/waf.md"),
    sections=(Section("waf", Field(WafSettings, None, "request inspection with ModSecurity and the OWASP CRS "
                                                     "for every route: {rules, paranoia, anomaly_threshold, mode, "
                                                     "exclusions, body_limit, on_body_limit}; docs/waf.md")),))
