"""The configuration loader: every problem names the file, the key and what is wrong."""

import subprocess
import sys

import pytest

from mailserver import config


def load_text(tmp_path, text):
    path = tmp_path / "m.toml"
    path.write_text(text)
    return config.load(str(path)), str(path)


@pytest.mark.parametrize("text, expected", [
    ('[imap]\nlisten = "127.0.0.1:143"\n', "[imap] listen: expected a list"),
    ('[imap]\nlisten = ["127.0.0.1:70000"]\n', "port out of range"),
    ('[imap]\nlisten = ["nonsense"]\n', 'expected "host:port"'),
    ('[imap]\nmax_line_length = -1\n', "[imap] max_line_length: must be greater than 0"),
    ('[imap]\nmax_line_length = true\n', "[imap] max_line_length: expected an integer"),
    ('[pop33]\n', "unknown section [pop33]"),
    ('[lmtp]\nlistne = []\n', "[lmtp] listne: unknown key"),
    ('[server]\nstate_dir = "relative"\n', "[server] state_dir: must be an absolute path"),
    ('[server]\nlog_format = "xml"\n', "[server] log_format: must be one of"),
    ('[storage]\nformat = "mbox"\n', "no mailserver.mailbox_formats plugin named 'mbox'"),
    ('[storage.mailboxes]\nSpam = "\\\\Spam"\n', "special use must be one of"),
    ('[imap\n', "not valid TOML"),
])
def test_bad_values_are_refused_with_file_and_key(tmp_path, text, expected):
    with pytest.raises(config.ConfigError) as e:
        load_text(tmp_path, text)
    assert str(tmp_path / "m.toml") in str(e.value)
    assert expected in str(e.value)


def test_defaults_and_derived_paths(tmp_path):
    cfg, _ = load_text(tmp_path, f'[server]\nstate_dir = "{tmp_path}"\n[imap]\nlisten = ["[::1]:1143", "unix:/tmp/x.sock"]\n')
    assert cfg.rbox.index_path == f"{tmp_path}/index"
    assert cfg.rbox.object_path == f"{tmp_path}/objects"
    assert cfg.imap.listen == ["[::1]:1143", "unix:/tmp/x.sock"]
    assert cfg.server.hostname


def test_shipped_example_is_valid():
    config.load("etc/mailserver.toml")


def test_config_check_command_exits_nonzero(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[imap]\nlisten = 5\n")
    run = subprocess.run([sys.executable, "-m", "mailserver", "config", "check", "--config", str(bad)],
                         capture_output=True, text=True)
    assert run.returncode == 2
    assert "[imap] listen: expected a list" in run.stderr
    ok = subprocess.run([sys.executable, "-m", "mailserver", "config", "check", "--config", "etc/mailserver.toml"],
                        capture_output=True, text=True)
    assert ok.returncode == 0 and '"format": "rbox"' in ok.stdout


def test_config_check_hides_secrets(tmp_path):
    conf = tmp_path / "secret.toml"
    conf.write_text(f'[server]\nstate_dir = "{tmp_path}"\n\n'
                    '[[auth.passdb]]\ndriver = "ldap"\nuris = ["ldap://127.0.0.1"]\nbase = "dc=example,dc=org"\n'
                    'bind_dn = "cn=reader,dc=example,dc=org"\nbind_password = "ldap-s3cret"\n\n'
                    '[auth.oauth2]\nintrospection_url = "https://sso.example.org/introspect"\n'
                    'client_id = "mailserver"\nclient_secret = "oauth-s3cret"\n')
    run = subprocess.run([sys.executable, "-m", "mailserver", "config", "check", "--config", str(conf)],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "s3cret" not in run.stdout
    assert run.stdout.count('"<hidden>"') == 2 and "cn=reader,dc=example,dc=org" in run.stdout


def test_every_key_is_documented():
    from pathlib import Path
    doc = Path("docs/configuration.md").read_text()
    reference = config.reference_markdown()
    assert reference.strip() in doc, "docs/configuration.md is stale: run scripts/gen-config-doc"
    for section, keys in config.schema().items():
        for name, key in keys.items():
            assert key.doc, f"[{section}] {name} has no documentation"
