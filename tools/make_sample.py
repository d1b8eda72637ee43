#!/usr/bin/env python3
"""Writes data/sample.jsonl: the sample data set of the README's quick start.

A few thousand configuration and session records of a made-up web service, in
the JSON Lines format of `mapkv dump` (sorted by key bytes, one
{"key": ..., "value": ...} object per line, "value_base64" for binary
values), so that `mapkv load` then `mapkv dump` gives the file back byte for
byte. Deterministic: the same script always writes the same bytes.

    python3 tools/make_sample.py [OUT]     # default: data/sample.jsonl
"""
import base64
import datetime
import json
import os
import random
import sys
import unicodedata

SEED = 20240501
BASE_TIME = datetime.datetime(2024, 5, 1, 8, 0, 0, tzinfo=datetime.timezone.utc)

FIRST = ["Anna", "Ben", "Chloé", "David", "Elif", "Farid", "Grace", "Hiro", "Ines", "Jonas", "Katja",
         "Liam", "Maja", "Nils", "Olga", "Pedro", "Quinn", "Rosa", "Sven", "Tomás", "Uma", "Vera",
         "Wei", "Xenia", "Yusuf", "Zoë", "Søren", "Małgorzata", "Łukasz", "Jürgen", "美咲", "陽翔"]
LAST = ["Müller", "Schmidt", "García", "Rossi", "Nowak", "Dubois", "Jensen", "Yılmaz", "Silva",
        "Kowalski", "Novák", "O'Brien", "Tanaka", "Kim", "Nguyen", "Smith", "Öztürk", "Häkkinen"]
LOCALES = ["en-US", "en-GB", "de-DE", "fr-FR", "es-ES", "pt-BR", "ja-JP", "pl-PL", "tr-TR", "da-DK"]
TIMEZONES = ["Europe/Berlin", "Europe/London", "America/New_York", "America/Sao_Paulo", "Asia/Tokyo",
             "Europe/Warsaw", "Europe/Istanbul", "UTC"]
PLANS = ["free", "free", "free", "pro", "pro", "team", "enterprise"]
AGENTS = ["Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0",
          "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_4) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Safari/605.1.15",
          "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36",
          "mapkv-sync/0.9 (+https://example.invalid/bot)",
          "curl/7.88.1"]
SCOPES = ["read", "write", "admin", "billing", "export"]

SERVICES = {
    "http": {"port": "8080", "bind": "0.0.0.0", "read_timeout": "15s", "write_timeout": "30s",
             "max_header_bytes": "1048576", "tls": "true", "tls_cert": "/etc/app/tls/cert.pem",
             "tls_key": "/etc/app/tls/key.pem", "gzip": "true", "cors_origins": '["https://app.example.com"]'},
    "grpc": {"port": "9090", "max_recv_msg_bytes": "4194304", "keepalive": "2m", "reflection": "false"},
    "db": {"host": "db-primary.internal", "port": "5432", "name": "app", "user": "app_rw",
           "pool_min": "4", "pool_max": "32", "statement_timeout": "5s", "sslmode": "verify-full",
           "replicas": '["db-replica-1.internal", "db-replica-2.internal"]'},
    "cache": {"backend": "mapkv", "path": "/var/lib/app/cache.mkv", "ttl": "10m", "max_entries": "500000"},
    "auth": {"issuer": "https://auth.example.com", "audience": "app", "session_ttl": "12h",
             "refresh_ttl": "30d", "password_min_length": "12", "mfa": "optional",
             "lockout": '{"attempts": 5, "window": "15m"}'},
    "mail": {"smtp_host": "smtp.internal", "smtp_port": "587", "from": "App <noreply@example.com>",
             "retry": "3", "templates": "/etc/app/mail"},
    "queue": {"url": "amqp://queue.internal:5672/", "prefetch": "64", "dead_letter": "app.dlq",
              "workers": "8"},
    "log": {"level": "info", "format": "json", "sample_rate": "0.1", "output": "stderr"},
    "metrics": {"listen": ":9100", "path": "/metrics", "histogram_buckets": "[0.005, 0.01, 0.05, 0.1, 0.5, 1, 5]"},
    "search": {"endpoint": "http://search.internal:9200", "index": "app-v3", "shards": "3", "replicas": "1"},
    "storage": {"bucket": "app-uploads", "region": "eu-central-1", "max_upload_bytes": "26214400",
                "allowed_types": '["image/png", "image/jpeg", "application/pdf"]'},
    "billing": {"currency": "EUR", "tax_mode": "inclusive", "invoice_prefix": "INV-", "grace_days": "7"},
}
FEATURES = ["new_dashboard", "dark_mode", "csv_export", "bulk_edit", "sso_saml", "audit_log",
            "beta_search", "realtime_sync", "inline_comments", "usage_alerts", "api_v2", "webhooks",
            "two_factor_push", "workspace_templates", "ai_summaries", "legacy_editor"]


ROMAN = {"美咲": "misaki", "陽翔": "haruto", "ı": "i", "ł": "l", "Ł": "l", "ø": "o", "'": ""}


def ascii_name(name):
    for k, v in ROMAN.items():
        name = name.replace(k, v)
    return unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode().lower()


def iso(t):
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def compact_json(obj):
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def build(rng):
    pairs = {}
    for svc, settings in SERVICES.items():
        for name, value in settings.items():
            pairs[f"config:service/{svc}/{name}"] = value
    pairs["config:release"] = "2024.05.1"
    pairs["config:maintenance_window"] = "Sun 02:00-04:00 UTC"
    pairs["config:motd"] = "Scheduled maintenance on Sunday.\nExpect short interruptions."
    for flag in FEATURES:
        pairs[f"feature:{flag}"] = rng.choice(["on", "off", "rollout:5%", "rollout:25%", "rollout:50%",
                                               "allow:team,enterprise"])

    users = list(range(1000, 1000 + 900))
    for uid in users:
        first, last = rng.choice(FIRST), rng.choice(LAST)
        created = BASE_TIME - datetime.timedelta(days=rng.randrange(1, 1500), seconds=rng.randrange(86400))
        email_user = ascii_name(f"{first}.{last}")
        profile = {"id": uid, "name": f"{first} {last}", "email": f"{email_user}{uid}@example.com",
                   "plan": rng.choice(PLANS), "locale": rng.choice(LOCALES), "created": iso(created)}
        pairs[f"user:{uid}:profile"] = compact_json(profile)
        if rng.random() < 0.6:
            settings = {"theme": rng.choice(["light", "dark", "system"]), "timezone": rng.choice(TIMEZONES),
                        "notifications": {"email": rng.random() < 0.7, "push": rng.random() < 0.4,
                                          "digest": rng.choice(["daily", "weekly", "off"])}}
            pairs[f"user:{uid}:settings"] = compact_json(settings)
        if rng.random() < 0.05:
            # A small binary avatar thumbnail header: stored as value_base64.
            blob = b"\x89PNG\r\n\x1a\n" + bytes(rng.randrange(256) for _ in range(rng.randrange(16, 48)))
            pairs[f"user:{uid}:avatar"] = blob
        if rng.random() < 0.3:
            pairs[f"user:{uid}:last_login"] = iso(BASE_TIME - datetime.timedelta(minutes=rng.randrange(60 * 24 * 30)))

    for _ in range(1600):
        sid = "%032x" % rng.getrandbits(128)
        start = BASE_TIME - datetime.timedelta(minutes=rng.randrange(60 * 24 * 2))
        session = {"user_id": rng.choice(users), "created": iso(start),
                   "expires": iso(start + datetime.timedelta(hours=12)),
                   "ip": f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}",
                   "user_agent": rng.choice(AGENTS),
                   "scopes": sorted(rng.sample(SCOPES, rng.randrange(1, 4)))}
        pairs[f"session:{sid}"] = compact_json(session)

    for _ in range(200):
        ip = f"203.0.113.{rng.randrange(1, 255)}" if rng.random() < 0.5 else f"198.51.100.{rng.randrange(1, 255)}"
        pairs[f"ratelimit:{ip}"] = str(rng.randrange(1, 120))
    return pairs


def line(key, value):
    fields = {"key": key}
    if isinstance(value, bytes):
        fields["value_base64"] = base64.b64encode(value).decode("ascii")
    else:
        fields["value"] = value
    return json.dumps(fields, ensure_ascii=False) + "\n"


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "data", "sample.jsonl")
    pairs = build(random.Random(SEED))
    keys = sorted(pairs, key=lambda k: k.encode("utf-8"))  # the order of `mapkv dump`
    with open(out, "w", encoding="utf-8", newline="\n") as f:
        for k in keys:
            f.write(line(k, pairs[k]))
    print(f"{out}: {len(keys)} pairs")


if __name__ == "__main__":
    main()
