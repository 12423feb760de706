"""[auth], [auth.oauth2], [tls] and the passdb/userdb tables in the one loader."""

import pytest

from mailserver import config
from mailserver.auth.service import build_authenticator


def load(tmp_path, text):
    path = tmp_path / "m.toml"
    path.write_text(text)
    return config.load(str(path))


def test_tables(tmp_path):
    cfg = load(tmp_path, '[auth]\npasswd_file = "/etc/p"\nmaster_user_separator = "*"\n'
                         '[[auth.passdb]]\ndriver = "passwd-file"\npath = "/etc/masters"\nmaster = true\n'
                         '[[auth.userdb]]\ndriver = "static"\nhome = "/srv/%u"\n'
                         '[auth.oauth2]\nintrospection_url = "https://sso.example.org/i"\n'
                         '[tls]\ncert = "/etc/c.pem"\nkey = "/etc/k.pem"\nmin_version = "TLSv1.3"\n')
    assert cfg.auth.passdb == [{"driver": "passwd-file", "master": False, "path": "/etc/p"},
                               {"driver": "passwd-file", "master": True, "path": "/etc/masters"}]
    assert cfg.auth.userdb[0]["home"] == "/srv/%u" and cfg.auth.userdb[0]["allow_all_users"] is False
    assert cfg.section("auth.oauth2").introspection_url == "https://sso.example.org/i"
    assert cfg.tls.min_version == "TLSv1.3"


@pytest.mark.parametrize("text, expected", [
    ('[auth]\nmaster_user_separator = ""\n[[auth.passdb]]\ndriver = "passwd-file"\npath = "/m"\nmaster = true\n',
     "master_user_separator: required"),
    ('[[auth.passdb]]\npath = "/x"\n', "[[auth.passdb]] #1 driver: required"),
    ('[[auth.passdb]]\ndriver = "passwd-file"\n', "[[auth.passdb]] #1 (passwd-file) path: required"),
    ('[[auth.passdb]]\ndriver = "passwd-file"\npath = "rel"\n', "path: must be an absolute path"),
    ('[[auth.userdb]]\ndriver = "static"\nmaster = true\n', "master: unknown key"),
    ('[auth]\npassdb = ["x"]\n', "expected a list of tables"),
    ('[auth]\nplaintext_networks = ["10.0.0.0/33"]\n', "not an address or network"),
    ('[auth.oauth2]\nurl = "x"\n', "[auth.oauth2] url: unknown key"),
    ('[tls]\nmin_version = "SSLv3"\n', "[tls] min_version: must be one of"),
    ('[imap]\nlisten_tls = ["nonsense"]\n', "[imap] listen_tls"),
])
def test_errors_name_the_table_and_key(tmp_path, text, expected):
    with pytest.raises(config.ConfigError) as e:
        load(tmp_path, text)
    assert expected in str(e.value) and str(tmp_path / "m.toml") in str(e.value)


def test_no_passdb_and_bad_oauth_url(tmp_path):
    with pytest.raises(config.ConfigError, match="no passdb configured"):
        build_authenticator(load(tmp_path, '[server]\nstate_dir = "/tmp"\n'))
    passwd = tmp_path / "passwd"
    passwd.write_text("a:{PLAIN}b\n")
    with pytest.raises(config.ConfigError, match="must be an http"):
        build_authenticator(load(tmp_path, f'[auth]\npasswd_file = "{passwd}"\n'
                                           '[auth.oauth2]\nintrospection_url = "ftp://x"\n'))
