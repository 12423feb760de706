"""``mailserver demo``: the embedded default with a demo user, for a first look.

Creates STATE_DIR with a configuration, a passwd-file holding one user with a random password
(kept across runs), then serves on fixed loopback ports and prints how to log in.
"""

from __future__ import annotations

import os
import secrets
import sys

from mailserver import config as configmod

PORTS = {"imap": 10143, "pop3": 10110, "lmtp": 10024}
DEMO_USER = "demo@example.org"


def run(state_dir: str, host: str = "127.0.0.1") -> int:
    from mailserver import server
    from mailserver.auth import schemes
    state_dir = os.path.abspath(state_dir)
    os.makedirs(state_dir, 0o700, exist_ok=True)
    pw_file = os.path.join(state_dir, "demo-password")
    if os.path.exists(pw_file):
        with open(pw_file) as f:
            password = f.read().strip()
    else:
        password = secrets.token_urlsafe(9)
        with open(os.open(pw_file, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
            f.write(password + "\n")
    passwd = os.path.join(state_dir, "passwd")
    with open(passwd, "w") as f:
        f.write(f"{DEMO_USER}:{schemes.hash_password('SHA512-CRYPT', password)}::::::\n")
    conf_path = os.path.join(state_dir, "mailserver.toml")
    with open(conf_path, "w") as f:
        f.write(f'[server]\nstate_dir = "{state_dir}"\nlog_format = "text"\n\n')
        for proto, port in PORTS.items():
            f.write(f'[{proto}]\nlisten = ["{host}:{port}"]\n\n')
        f.write(f'[auth]\npasswd_file = "{passwd}"\n')
    try:
        cfg = configmod.load(conf_path)
    except configmod.ConfigError as e:
        print(f"mailserver demo: {e}", file=sys.stderr)
        return 2
    print(f"""
mailserver demo (embedded default: mail and index under {state_dir})
  IMAP  {host}:{PORTS['imap']}
  POP3  {host}:{PORTS['pop3']}
  LMTP  {host}:{PORTS['lmtp']}
  login: {DEMO_USER}   password: {password}
  config: {conf_path}
Try:  python3 -c "import smtplib; s=smtplib.LMTP('{host}', {PORTS['lmtp']}); s.sendmail('me@example.org', ['{DEMO_USER}'], b'Subject: hi\\r\\n\\r\\nhello\\r\\n')"
Stop with Ctrl-C.
""", flush=True)
    return server.serve(cfg)
