"""nginx + ModSecurity (Debian's libnginx-mod-http-modsecurity) with the same base
configuration and CRS as the gateway's WAF at paranoia 1: the reference the WAF's verdicts
are tested against (tests/integration/test_waf_parity.py) and its speed is measured
against (bench/waf.py)."""
from __future__ import annotations

import os

MODULES = "/usr/lib/nginx/modules"


def available() -> bool:
    return os.path.exists(f"{MODULES}/ngx_http_modsecurity_module.so") and os.path.isdir(
        "/usr/share/modsecurity-crs/rules")


def nginx_conf(workdir: str, port: int, upstream_port: int) -> str:
    """Write the rules file and an nginx.conf proxying 127.0.0.1:`port` to `upstream_port`
    through ModSecurity; the conf's path (run with `nginx -c CONF -p WORKDIR`)."""
    base = open("/etc/nginx/modsecurity.conf").read()
    base = base.replace("SecRuleEngine DetectionOnly", "SecRuleEngine On").replace(
        "SecAuditEngine RelevantOnly", "SecAuditEngine Off").replace("SecStatusEngine On", "SecStatusEngine Off")
    base = base.replace("SecUnicodeMapFile unicode.mapping", "SecUnicodeMapFile /etc/nginx/unicode.mapping")
    rules = os.path.join(workdir, "modsec-main.conf")
    with open(rules, "w") as f:
        f.write(base + "\nInclude /etc/modsecurity/crs/crs-setup.conf\n"
                'SecAction "id:900000,phase:1,nolog,pass,t:none,setvar:tx.paranoia_level=1"\n'
                'SecAction "id:900110,phase:1,nolog,pass,t:none,setvar:tx.inbound_anomaly_score_threshold=5"\n'
                "Include /etc/modsecurity/crs/REQUEST-900-EXCLUSION-RULES-BEFORE-CRS.conf\n"
                "Include /usr/share/modsecurity-crs/rules/*.conf\n"
                "Include /etc/modsecurity/crs/RESPONSE-999-EXCLUSION-RULES-AFTER-CRS.conf\n")
    conf = os.path.join(workdir, "nginx-modsec.conf")
    with open(conf, "w") as f:
        f.write(f"""load_module {MODULES}/ndk_http_module.so;
load_module {MODULES}/ngx_http_modsecurity_module.so;
worker_processes 1;
daemon off;
pid {conf}.pid;
error_log {workdir}/nginx-modsec-error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  client_body_temp_path {workdir};
  upstream backend {{ server 127.0.0.1:{upstream_port}; keepalive 256; }}
  server {{
    listen 127.0.0.1:{port};
    modsecurity on;
    modsecurity_rules_file {rules};
    location / {{ proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection ""; }}
  }}
}}
""")
    return conf
