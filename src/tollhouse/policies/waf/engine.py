"""The WAF's engine: ModSecurity v3 (PyPI's `libmodsecurity`) with the rule files as shipped.

A rules set is loaded once per distinct `waf` settings per config version, in
the order nginx + ModSecurity + CRS users load it:

1. ModSecurity's recommended base configuration as the distribution ships it
   (Debian: /etc/nginx/modsecurity.conf from libnginx-mod-http-modsecurity, or
   /etc/modsecurity/modsecurity.conf-recommended): its body processors and the
   rules that deny a body the engine could not parse (200002) or a multipart
   body that fails strict checks (200003). Four of its directives are set the
   gateway's way: the engine On, no audit log file, no status beacon, and the
   unicode map found beside the file.
2. The CRS's `crs-setup.conf`, then the paranoia level and the inbound anomaly
   threshold (rules 900000 and 900110, as crs-setup.conf shows them).
3. The CRS's rule files in order (the exclusion files before and after them
   when they sit beside crs-setup.conf), or the user's own rule files.
4. The route's exclusions, the CRS way: SecRuleRemoveById, SecRuleRemoveByTag,
   SecRuleUpdateTargetById / ByTag.

`RulesSet.load()` of a string does not follow Include: each file is loaded on
its own. Nothing here writes a rule of the CRS's.
"""
from __future__ import annotations

import glob
import logging
import os
import re
import tempfile

log = logging.getLogger("tollhouse.waf")

#: Where distributions ship ModSecurity's recommended base configuration (first found is used).
BASE_CONFIGS = ("/etc/modsecurity/modsecurity.conf-recommended", "/etc/nginx/modsecurity.conf")

_RULE_ID = re.compile(r"\bid\s*:\s*'?(\d+)")


class RulesError(ValueError):
    """A rules set that cannot be loaded: the message names the file and what is wrong."""


def base_config_path(configured: str) -> str:
    if configured:
        return configured
    for path in BASE_CONFIGS:
        if os.path.exists(path):
            return path
    raise RulesError("no ModSecurity base configuration found (install libnginx-mod-http-modsecurity, or set "
                     "waf.base_config)")


def rule_files(settings) -> list[str]:
    """The rule files of `settings`, in load order."""
    if settings.rules != "crs":
        return list(settings.rules)
    rules_dir = os.path.join(settings.crs_dir, "rules")
    if not os.path.isdir(rules_dir):
        raise RulesError(f"crs_dir {settings.crs_dir!r} has no rules/ directory")
    files = sorted(glob.glob(os.path.join(rules_dir, "*.conf")))
    if not files:
        raise RulesError(f"crs_dir {settings.crs_dir!r} has no rule files")
    setup_dir = os.path.dirname(settings.crs_setup)
    before = os.path.join(setup_dir, "REQUEST-900-EXCLUSION-RULES-BEFORE-CRS.conf")
    after = os.path.join(setup_dir, "RESPONSE-999-EXCLUSION-RULES-AFTER-CRS.conf")
    return ([before] if os.path.exists(before) else []) + files + ([after] if os.path.exists(after) else [])


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError as e:
        raise RulesError(f"cannot read {path}: {e.strerror}") from None


def _base_text(path: str) -> str:
    text = _read(path)
    here = os.path.dirname(os.path.abspath(path))
    text = re.sub(r"(?m)^\s*SecRuleEngine\s+.*$", "SecRuleEngine On", text)
    text = re.sub(r"(?m)^\s*SecAuditEngine\s+.*$", "SecAuditEngine Off", text)
    text = re.sub(r"(?m)^\s*SecStatusEngine\s+.*$", "SecStatusEngine Off", text)
    # A relative unicode map is the file's neighbour (a string load has no directory of its own).
    return re.sub(r"(?m)^(\s*SecUnicodeMapFile\s+)(?!/)(\S+)", lambda m: m.group(1) + os.path.join(here, m.group(2)),
                  text)


def _statements(text: str) -> list[tuple[int, int, str]]:
    """SecLang directives as (first line, last line, text with continuations joined)."""
    out, current, start = [], [], 0
    lines = text.splitlines()
    for i, line in enumerate(lines):
        stripped = line.rstrip()
        if not current and (not stripped.strip() or stripped.lstrip().startswith("#")):
            continue
        if not current:
            start = i
        if stripped.endswith("\\"):
            current.append(stripped[:-1])
            continue
        current.append(stripped)
        out.append((start, i, " ".join(part.strip() for part in current)))
        current = []
    if current:
        out.append((start, len(lines) - 1, " ".join(part.strip() for part in current)))
    return out


def without_geo_lookup(text: str) -> str:
    """A rule file with its rule chains that use @geoLookup commented out: the PyPI engine
    is built without GeoIP/MaxMind. In the CRS (REQUEST-910) such a chain only acts once
    `tx.high_risk_country_codes` is set, which the CRS leaves empty."""
    statements = _statements(text)
    lines = text.splitlines()
    i = 0
    while i < len(statements):
        # A chain: a rule with the "chain" action and the rules that follow it.
        group = [statements[i]]
        while _chains(group[-1][2]) and i + len(group) < len(statements):
            group.append(statements[i + len(group)])
        if any("@geoLookup" in s for _, _, s in group):
            for first, last, _ in group:
                for n in range(first, last + 1):
                    lines[n] = "# " + lines[n]
        i += len(group)
    return "\n".join(lines) + "\n"


def _chains(statement: str) -> bool:
    """Whether a SecRule's actions (its last quoted argument) include `chain`."""
    if not statement.startswith("SecRule"):
        return False
    actions = re.search(r'"([^"]*)"\s*$', statement)
    return actions is not None and re.search(r"(?:^|,)\s*chain\s*(?:,|$)", actions.group(1)) is not None


def exclusion_directives(exclusions) -> str:
    """The CRS way of excluding: after the rules, by id or tag, whole or for one target."""
    lines = []
    for ex in exclusions:
        if ex.rule and ex.target:
            lines.append(f'SecRuleUpdateTargetById {ex.rule} "!{ex.target}"')
        elif ex.rule:
            lines.append(f"SecRuleRemoveById {ex.rule}")
        elif ex.tag and ex.target:
            lines.append(f'SecRuleUpdateTargetByTag "{ex.tag}" "!{ex.target}"')
        elif ex.tag:
            lines.append(f'SecRuleRemoveByTag "{ex.tag}"')
    return "\n".join(lines) + "\n"


class Engine:
    """ModSecurity and one loaded rules set (see the module's doc); `ids` are the rule ids
    the files define, for checking exclusions."""

    __slots__ = ("modsec", "rules", "ids", "files")

    def __init__(self, settings):
        from libmodsecurity import ModSecurity, RulesSet

        self.modsec = ModSecurity()
        self.modsec.set_connector_information("Tollhouse")
        # The engine's messages go to the gateway's log, never to stderr.
        self.modsec.set_log_callback(_engine_log)
        self.rules = RulesSet()
        self.ids: set[int] = set()
        self.files = rule_files(settings)
        base = base_config_path(settings.base_config)
        self._load(base, _base_text(base))
        if settings.rules == "crs":
            self._load_file(settings.crs_setup)
            self._load("waf.paranoia", (
                f'SecAction "id:900000,phase:1,nolog,pass,t:none,setvar:tx.paranoia_level={settings.paranoia}"\n'
                f'SecAction "id:900110,phase:1,nolog,pass,t:none,'
                f'setvar:tx.inbound_anomaly_score_threshold={settings.anomaly_threshold}"\n'))
        for path in self.files:
            self._load_file(path)
        for ex in settings.exclusions:
            if ex.rule and ex.rule not in self.ids:
                raise RulesError(f"exclusion of rule {ex.rule}: no rule has that id")
        if settings.exclusions:
            self._load("waf.exclusions", exclusion_directives(settings.exclusions))

    def _load(self, name: str, text: str) -> None:
        """Directives made here (the base configuration, settings, exclusions)."""
        self.ids.update(int(m) for m in _RULE_ID.findall(text))
        if self.rules.load(text) < 0:
            raise RulesError(f"{name}: {self.rules.get_parser_error().strip()}")

    def _load_file(self, path: str) -> None:
        """A rule file as shipped, by its path: its data files (@pmFromFile) are its neighbours."""
        text = _read(path)
        self.ids.update(int(m) for m in _RULE_ID.findall(text))
        if self.rules.load_from_uri(path) >= 0:
            return
        error = self.rules.get_parser_error()
        if "@geoLookup" in text and ("GeoIP" in error or "MaxMind" in error):
            # This engine has no GeoIP: the file again, its geoLookup chains left out.
            cut = os.path.join(tempfile.gettempdir(), f"tollhouse-waf-{os.getpid()}-{os.path.basename(path)}")
            with open(cut, "w", encoding="utf-8") as f:
                f.write(without_geo_lookup(text))
            try:
                if self.rules.load_from_uri(cut) >= 0:
                    return
                error = self.rules.get_parser_error()
            finally:
                os.unlink(cut)
        raise RulesError(f"{path}: {error.strip()}")

    def transaction(self, request_id: str):
        from libmodsecurity import Transaction

        return Transaction(self.modsec, self.rules, request_id)


def _engine_log(message: str) -> None:
    log.debug("%s", message)
