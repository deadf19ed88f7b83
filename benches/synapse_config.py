"""Writes a Synapse config for benches/compare.sh into DIR: SQLite, one plain-HTTP client
listener on 127.0.0.1:PORT, open registration (the UIA dummy stage), rate limits off, no
outgoing key-server or phone-home traffic, and a log of warnings only (ourwhats runs at
warn too). Usage: synapse_config.py DIR PORT (run with the Synapse venv's python)."""

import os
import subprocess
import sys

import yaml

directory, port = sys.argv[1], int(sys.argv[2])
config_path = os.path.join(directory, "homeserver.yaml")

# Secrets and the signing key from Synapse's own generator, then our settings on top.
subprocess.run(
    [sys.executable, "-m", "synapse.app.homeserver", "--server-name", "localhost",
     "--config-path", config_path, "--data-directory", directory,
     "--generate-config", "--report-stats=no"],
    check=True, stdout=subprocess.DEVNULL,
)
with open(config_path) as f:
    config = yaml.safe_load(f)

unlimited = {"per_second": 100000, "burst_count": 100000}
log_config = os.path.join(directory, "log.yaml")
config.update({
    "listeners": [{
        "port": port, "bind_addresses": ["127.0.0.1"], "type": "http", "tls": False,
        "x_forwarded": False, "resources": [{"names": ["client"], "compress": False}],
    }],
    "database": {"name": "sqlite3", "args": {"database": os.path.join(directory, "homeserver.db")}},
    "log_config": log_config,
    "enable_registration": True,
    "enable_registration_without_verification": True,
    # Only registration and login hash passwords; neither is measured.
    "bcrypt_rounds": 4,
    "max_upload_size": "4G",
    "trusted_key_servers": [],
    "suppress_key_server_warning": True,
    "report_stats": False,
    "enable_metrics": False,
    "url_preview_enabled": False,
    # Synapse answers a repeated identical /sync from a cache for 2 minutes after the
    # first; real clients never repeat one, and the benchmark's repeated syncs must be
    # computed each time.
    "caches": {"sync_response_cache_duration": 0},
    "rc_message": unlimited,
    "rc_registration": unlimited,
    "rc_registration_token_validity": unlimited,
    "rc_login": {"address": unlimited, "account": unlimited, "failed_attempts": unlimited},
    "rc_joins": {"local": unlimited, "remote": unlimited},
    "rc_joins_per_room": unlimited,
    "rc_invites": {"per_room": unlimited, "per_user": unlimited, "per_issuer": unlimited},
    "rc_3pid_validation": unlimited,
    "rc_admin_redaction": unlimited,
    "rc_presence": {"per_user": unlimited},
    "rc_room_creation": unlimited,
    "rc_delayed_event_mgmt": unlimited,
    "rc_reports": unlimited,
})
with open(config_path, "w") as f:
    yaml.safe_dump(config, f)
with open(log_config, "w") as f:
    yaml.safe_dump({
        "version": 1,
        "formatters": {"precise": {"format": "%(asctime)s %(name)s %(levelname)s %(message)s"}},
        "handlers": {"file": {"class": "logging.FileHandler", "formatter": "precise",
                              "filename": os.path.join(directory, "homeserver.log")}},
        "root": {"level": "WARNING", "handlers": ["file"]},
        "disable_existing_loggers": False,
    }, f)
