"""Writes the config of a Synapse that federates with ourwhats on loopback over verified
TLS (see ../shared/FEDERATION-NOTES.md, "Synapse as a peer on loopback"):
server_name 127.0.0.1:FED_PORT, a TLS federation listener on FED_PORT with a certificate
from the test CA, a plain client listener on CLIENT_PORT, the test CA trusted for outbound
federation, loopback allowed, no key servers, short retry intervals, open registration and
no rate limits, its room directory open to other servers. Usage:
synapse_config.py DIR FED_PORT CLIENT_PORT CERT KEY CA [NAME_PORT]  (with the Synapse venv's
python); with NAME_PORT the server is named 127.0.0.1:NAME_PORT (a proxy there forwards to
FED_PORT)."""

import os
import subprocess
import sys

import yaml

directory, fed_port, client_port, cert, key, ca = sys.argv[1:7]
fed_port, client_port = int(fed_port), int(client_port)
name_port = int(sys.argv[7]) if len(sys.argv) > 7 else fed_port
server_name = f"127.0.0.1:{name_port}"
config_path = os.path.join(directory, "homeserver.yaml")

subprocess.run(
    [sys.executable, "-m", "synapse.app.homeserver", "--server-name", server_name,
     "--config-path", config_path, "--data-directory", directory,
     "--generate-config", "--report-stats=no"],
    check=True, stdout=subprocess.DEVNULL,
)
with open(config_path) as f:
    config = yaml.safe_load(f)

unlimited = {"per_second": 100000, "burst_count": 100000}
log_config = os.path.join(directory, "log.yaml")
config.update({
    "listeners": [
        {"port": fed_port, "bind_addresses": ["127.0.0.1"], "type": "http", "tls": True,
         "x_forwarded": False, "resources": [{"names": ["federation"], "compress": False}]},
        {"port": client_port, "bind_addresses": ["127.0.0.1"], "type": "http", "tls": False,
         "x_forwarded": False, "resources": [{"names": ["client"], "compress": False}]},
    ],
    "tls_certificate_path": cert,
    "tls_private_key_path": key,
    "federation_custom_ca_list": [ca],
    "federation_verify_certificates": True,
    "ip_range_blacklist": [],
    "federation_ip_range_blacklist": [],
    "trusted_key_servers": [],
    "allow_public_rooms_over_federation": True,
    "room_list_publication_rules": [{"action": "allow"}],
    "suppress_key_server_warning": True,
    "federation": {
        "destination_min_retry_interval": "2s",
        "destination_max_retry_interval": "30s",
        "max_long_retry_delay": "5s",
        "max_short_retry_delay": "1s",
    },
    "database": {"name": "sqlite3", "args": {"database": os.path.join(directory, "homeserver.db")}},
    "log_config": log_config,
    "enable_registration": True,
    "enable_registration_without_verification": True,
    "bcrypt_rounds": 4,
    "report_stats": False,
    "enable_metrics": False,
    "url_preview_enabled": False,
    "presence": {"enabled": False},
    "rc_message": unlimited,
    "rc_registration": unlimited,
    "rc_login": {"address": unlimited, "account": unlimited, "failed_attempts": unlimited},
    "rc_joins": {"local": unlimited, "remote": unlimited},
    "rc_joins_per_room": unlimited,
    "rc_invites": {"per_room": unlimited, "per_user": unlimited, "per_issuer": unlimited},
    "rc_room_creation": unlimited,
    "rc_federation": {"window_size": 1000, "sleep_limit": 10000, "sleep_delay": 0,
                      "reject_limit": 10000, "concurrent": 100},
    "rc_key_requests": unlimited,
})
with open(config_path, "w") as f:
    yaml.safe_dump(config, f)
with open(log_config, "w") as f:
    yaml.safe_dump({
        "version": 1,
        "formatters": {"precise": {"format": "%(asctime)s %(name)s %(levelname)s %(message)s"}},
        "handlers": {"file": {"class": "logging.FileHandler", "formatter": "precise",
                              "filename": os.path.join(directory, "homeserver.log")}},
        "root": {"level": "INFO", "handlers": ["file"]},
        "disable_existing_loggers": False,
    }, f)
