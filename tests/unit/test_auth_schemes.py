"""Password schemes: our hashes, Dovecot's hashes (vectors made with ``doveadm pw`` 2.3.19), and
a live cross-check against doveadm when it is installed."""

import shutil
import subprocess

import pytest

from mailserver.auth import schemes

PASSWORD = "pässword"

# Made with `doveadm pw -s SCHEME -p pässword` (Dovecot 2.3.19, Debian 12).
DOVECOT_VECTORS = [
    "{PLAIN}pässword",
    "{CLEARTEXT}pässword",
    "{CLEAR}pässword",
    "{PLAIN-MD5}8e1843033a0f6ee52e2f618aa8ebbef4",
    "{LDAP-MD5}jhhDAzoPbuUuL2GKqOu+9A==",
    "{SMD5}kbRiS0DjLfFiUZnwTKDTt0Y8yKo=",
    "{MD5}$1$cTSc0wvF$S3worB9cigmW3tWhYs1hA.",
    "{SHA}I7dElEdfX4dJgLdnbVEeI9iG2mQ=",
    "{SHA1}I7dElEdfX4dJgLdnbVEeI9iG2mQ=",
    "{SHA256}NHgme1YSeRtAmIkGs6eJfrarUB4EuV7TL5nQr99mnZw=",
    "{SHA512}KF3icbSeAO9oGc8Ku/AxXpfCXLo2FhZ8dw78Umxki03hH0sA3HH67TOjEse6g2kNPtFKqq32tiKqSJlv8H7IpA==",
    "{SSHA}OnbiEutI7MFNDJ5k8YG0hQolA7PTnstv",
    "{SSHA256}TUWx+dhucE31OBjTTnHLpIg2037xy7PBS1R8oQbbfCuu49Bd",
    "{SSHA512}IgPDLZ26xjNgvx3x0D9O0Ngqi32yjZsWNCoR7hTlW1BMKJtC1udtGMqAIqYPaBHroAAAycmN7G1JodN1hbXKpIL0Y9U=",
    "{CRYPT}$2y$05$aAOPCBxm10/deE59QTs2fOulNVo9ckt6y89tOQEkCTMNdtaibI4Aq",
    "{DES-CRYPT}QwJUFcDYHo5ck",
    "{MD5-CRYPT}$1$ItoQedmJ$HE1VGOtIKe4LL5TBUL0Ct.",
    "{SHA256-CRYPT}$5$P4ft02PxBv4squ6w$trV0TxNrGdogSoFoYDR3L3nIpsWUwdYQzkzyroxMAX6",
    "{SHA512-CRYPT}$6$Bua2mwKjLkweOgp4$Hhk48A/WY/s/NINzBSVaxXNSw2/5tt0pNhb.TAMF0F519pn/XMLW0hFEOAjre3jy5jPy5chFyDOp.bY9BGExO.",
    "{BLF-CRYPT}$2y$05$qUY5I1Y1gj9Xmx3wOZCx3O30bc0Qd4fBOlUW6UceVGE2LcYSyXNz.",
    "{ARGON2I}$argon2i$v=19$m=32768,t=4,p=1$6nJyNGm/e1KdgNukp/oZiw$MfquFOh2AIMdbQ9ytJixAAJ6bjUHCFSsHl1tWR2WVDo",
    "{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=1$5SRbnZekmyB1+K4GIstL8A$7M243oW2rc1NpDeJaHqtPHSeWcGgoNQOzOTDTUIddeo",
    "{PBKDF2}$1$EeS9ZW1GmrVhOq3i$5000$05c87d0964735e24fc8fe2728ed1d783506a4e4f",
    "{SHA256.HEX}3478267b5612791b40988906b3a7897eb6ab501e04b95ed32f99d0afdf669d9c",
    "{PLAIN-MD5.B64}jhhDAzoPbuUuL2GKqOu+9A==",
    # for CRAM-MD5 and SCRAM logins (doveadm pw -s ... of Dovecot 2.3.19)
    "{SCRAM-SHA-1}4096,LpPm25iRopRRNu2AqmFD3g==,kh+tUJXnWol2A5AuyYlluPUP7To=,b0EjNWsbK0UBFPrd4Z9yuLLdXhk=",
    "{SCRAM-SHA-256}4096,N05Wz7kRfI7FTVAO+++ZFQ==,R7JiV4i+4+tf4BcfwF+bcSik/ljI5x38M1bBrbewdgA=,"
    "l/nl0ELtzkkPQwUYaAcjbo7gKeQrrMZM7h2RAG1Pae4=",
    "{CRAM-MD5}7dead29c194d4ac3cf5f337b23fa3b9b32c9f4b1d7d7b1fa2539d66ce368e997",
]

REQUIRED = ["PLAIN", "CLEARTEXT", "SHA512-CRYPT", "SHA256-CRYPT", "MD5-CRYPT", "BLF-CRYPT", "ARGON2ID",
            "ARGON2I", "SSHA512", "SSHA256", "SSHA", "SHA512", "SHA256", "SHA", "SHA1", "PBKDF2", "CRYPT"]


@pytest.mark.parametrize("stored", DOVECOT_VECTORS, ids=lambda s: s.split("}")[0][1:])
def test_dovecot_vectors(stored):
    assert schemes.verify(stored, PASSWORD)
    assert not schemes.verify(stored, "password")
    assert not schemes.verify(stored, "")


@pytest.mark.parametrize("name", schemes.supported())
def test_hash_then_verify(name):
    stored = schemes.hash_password(name, PASSWORD)
    assert stored.startswith("{" + name + "}")
    assert schemes.verify(stored, PASSWORD)
    assert schemes.verify(stored, PASSWORD.encode())
    assert not schemes.verify(stored, "x" + PASSWORD)   # (DES-CRYPT reads 8 bytes only)


def test_required_schemes_supported():
    assert set(REQUIRED) <= set(schemes.supported())


def test_output_shapes_match_doveadm():
    assert len(schemes.hash_password("SHA512-CRYPT", "x")) == len("{SHA512-CRYPT}$6$") + 16 + 1 + 86
    assert schemes.hash_password("SHA512-CRYPT", "x", rounds=10000).startswith("{SHA512-CRYPT}$6$rounds=10000$")
    assert schemes.hash_password("BLF-CRYPT", "x").startswith("{BLF-CRYPT}$2y$05$")
    assert schemes.hash_password("CRYPT", "x").startswith("{CRYPT}$2y$05$")
    assert schemes.hash_password("ARGON2ID", "x").startswith("{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=1$")
    assert schemes.hash_password("ARGON2I", "x").startswith("{ARGON2I}$argon2i$v=19$m=32768,t=4,p=1$")
    assert schemes.hash_password("PBKDF2", "x").startswith("{PBKDF2}$1$")
    # 4-byte salts, as Dovecot: 64 + 4 bytes -> 92 base64 characters
    assert len(schemes.hash_password("SSHA512", "x")) == len("{SSHA512}") + 92
    assert schemes.hash_password("SHA256", "pässword") == "{SHA256}NHgme1YSeRtAmIkGs6eJfrarUB4EuV7TL5nQr99mnZw="
    assert schemes.hash_password("sha256.hex", "pässword").startswith("{SHA256.HEX}3478267b")
    assert schemes.hash_password("PLAIN", "a:b") == "{PLAIN}a:b"


def test_scheme_names_are_case_insensitive():
    assert schemes.verify("{sha256}NHgme1YSeRtAmIkGs6eJfrarUB4EuV7TL5nQr99mnZw=", PASSWORD)


def test_no_prefix_is_crypt():
    # passwd-file's default scheme: any crypt(3) string
    assert schemes.verify("QwJUFcDYHo5ck", PASSWORD)
    assert schemes.verify("$6$Bua2mwKjLkweOgp4$Hhk48A/WY/s/NINzBSVaxXNSw2/5tt0pNhb.TAMF0F519pn/XMLW0hFEOAjre3jy5jPy5"
                          "chFyDOp.bY9BGExO.", PASSWORD)
    assert not schemes.verify("QwJUFcDYHo5ck", "other")
    assert schemes.scheme_of("QwJUFcDYHo5ck") == "CRYPT"
    # a bare $1$ is MD5-CRYPT, text after a further '$' ignored (Dovecot's password_get_scheme)
    assert schemes.split("$1$ItoQedmJ$HE1VGOtIKe4LL5TBUL0Ct.$junk") == ("MD5-CRYPT", "$1$ItoQedmJ$HE1VGOtIKe4LL5TBUL0Ct.")
    assert schemes.verify("$1$ItoQedmJ$HE1VGOtIKe4LL5TBUL0Ct.$junk", PASSWORD)


def test_hex_is_guessed_for_fixed_length_schemes():
    # {SHA256} stored as hex without the .HEX suffix: Dovecot guesses from the length.
    assert schemes.verify("{SHA256}3478267b5612791b40988906b3a7897eb6ab501e04b95ed32f99d0afdf669d9c", PASSWORD)


def test_bcrypt_uses_first_72_bytes_like_crypt_blowfish():
    # doveadm pw -s BLF-CRYPT -p aaaa...(80)
    stored = "{BLF-CRYPT}$2y$05$o7qCpxrZoPuU1muHHV8Wg.gVlr2K6uP1eKdC8DxbhB9OYUnE0iXF2"
    assert schemes.verify(stored, "a" * 80)
    assert schemes.verify(stored, "a" * 72)
    assert not schemes.verify(stored, "a" * 71)
    assert schemes.verify(schemes.hash_password("BLF-CRYPT", "b" * 100), "b" * 100)


def test_sha_crypt_is_checked_by_the_c_library(monkeypatch):
    # passlib's SHA-crypt is pure Python here, twice the cost under the GIL: it is only the
    # fallback where crypt(3) is missing.
    stored = schemes.hash_password("SHA512-CRYPT", "secret")
    if schemes._c_crypt(b"secret", stored.split("}", 1)[1]) is None:
        pytest.skip("no crypt(3) in this Python")
    def passlib_used(*args, **kwargs):
        raise AssertionError("passlib's pure-Python SHA-crypt was used")
    monkeypatch.setattr(schemes._ph.sha512_crypt, "verify", passlib_used)
    assert schemes.verify(stored, "secret")
    assert not schemes.verify(stored, "wrong")


def test_empty_password_hashes():
    assert schemes.verify("{PLAIN-MD5}d41d8cd98f00b204e9800998ecf8427e", "")
    assert not schemes.verify("{PLAIN}", "x")
    assert schemes.verify("{PLAIN}", "")
    assert not schemes.verify("{CRYPT}", "")       # crypt("") of an empty salt must not match


@pytest.mark.parametrize("stored", [
    "{SHA256}not base64!!",
    "{SHA256}QUJD",                     # valid base64, wrong length
    "{SSHA}QUJD",                       # shorter than the digest
    "{PBKDF2}$1$salt$x$00",
    "{PBKDF2}$2$salt$5000$" + "0" * 40,
    "{PBKDF2}$1$salt$5000$" + "zz" * 20,
    "{ARGON2ID}not-argon",
    "{SHA512-CRYPT}$6$broken",
    "{SHA256.HEX}zz",
    "{BLF-CRYPT}$2y$05$short",
])
def test_invalid_values_raise(stored):
    with pytest.raises(schemes.InvalidHash):
        schemes.verify(stored, "x")


def test_unknown_scheme():
    with pytest.raises(schemes.UnknownScheme):
        schemes.verify("{NOPE}abc", "x")
    with pytest.raises(schemes.UnknownScheme):
        schemes.hash_password("NOPE", "x")
    with pytest.raises(schemes.UnknownScheme):
        schemes.hash_password("SHA256.ROT13", "x")


DOVEADM = shutil.which("doveadm")


@pytest.mark.skipif(DOVEADM is None, reason="doveadm (dovecot-core) not installed")
@pytest.mark.parametrize("name", ["SHA512-CRYPT", "BLF-CRYPT", "ARGON2ID", "SSHA512", "PBKDF2", "CRYPT", "SHA1",
                                  "CRAM-MD5", "SCRAM-SHA-1", "SCRAM-SHA-256"])
def test_live_cross_check_with_doveadm(name):
    ours = schemes.hash_password(name, PASSWORD)
    ok = subprocess.run([DOVEADM, "pw", "-t", ours, "-p", PASSWORD], capture_output=True, timeout=30)
    assert ok.returncode == 0, ok.stderr
    bad = subprocess.run([DOVEADM, "pw", "-t", ours, "-p", "wrong"], capture_output=True, timeout=30)
    assert bad.returncode != 0
    theirs = subprocess.run([DOVEADM, "pw", "-s", name, "-p", PASSWORD], capture_output=True, text=True,
                            timeout=30).stdout.strip()
    assert theirs.startswith("{" + name + "}")
    assert schemes.verify(theirs, PASSWORD)


def test_cli_pw(capsys):
    from mailserver import cli
    assert cli.main(["pw", "-s", "ssha512", "-p", PASSWORD]) == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith("{SSHA512}") and schemes.verify(out, PASSWORD)
    assert cli.main(["pw", "--list"]) == 0
    assert set(REQUIRED) <= set(capsys.readouterr().out.split())
    assert cli.main(["pw", "-s", "NOPE", "-p", "x"]) == 2
