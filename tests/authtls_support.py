"""Test support for authentication and TLS: a server process with extra configuration in any
section (the harness's own sections merged with ours), and test certificates from trustme."""

from __future__ import annotations

import os
import ssl

from tests.harness import RunningServer


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(value)


def toml(sections: dict) -> str:
    """``{"auth": {...}, "tls": {...}}`` as TOML; a list of tables under ``passdb``/``userdb``
    becomes ``[[auth.passdb]]`` blocks, a dict value under ``oauth2`` ``[auth.oauth2]``."""
    out = []
    for name, values in sections.items():
        plain = {k: v for k, v in values.items() if not (isinstance(v, list) and v and isinstance(v[0], dict))
                 and not (name == "auth" and k == "oauth2")}
        out.append(f"[{name}]")
        out += [f"{k} = {toml_value(v)}" for k, v in plain.items()]
        out.append("")
        if name == "auth" and "oauth2" in values:
            out.append("[auth.oauth2]")
            out += [f"{k} = {toml_value(v)}" for k, v in values["oauth2"].items()]
            out.append("")
        for key, value in values.items():
            if isinstance(value, list) and value and isinstance(value[0], dict):
                for table in value:
                    out.append(f"[[{name}.{key}]]")
                    out += [f"{k} = {toml_value(v)}" for k, v in table.items()]
                    out.append("")
    return "\n".join(out)


class ConfiguredServer(RunningServer):
    """A ``RunningServer`` whose configuration sections can be extended (``sections``)."""

    def __init__(self, base_dir: str, sections: dict | None = None, users: int = 20, name: str = "server"):
        self.sections = sections or {}
        super().__init__(base_dir, users=users, name=name)

    def write_config(self) -> None:
        base = {
            "server": {"state_dir": self.state_dir, "log_format": "json", "log_level": "debug",
                       "shutdown_timeout": 10.0},
            "imap": {"listen": ["127.0.0.1:0"]},
            "pop3": {"listen": ["127.0.0.1:0"]},
            "lmtp": {"listen": ["127.0.0.1:0"]},
            "auth": {"passwd_file": self.passwd_path, "failure_delay": 0.0},
        }
        for name, values in getattr(self, "sections", {}).items():
            base.setdefault(name, {}).update(values)
        with open(self.config_path, "w") as f:
            f.write(toml(base))


class Certificates:
    """A trustme CA and a server certificate for localhost / 127.0.0.1 written to ``directory``
    (the CA's certificate too, as ``ca_path``); ``key_type``: "ec" or "rsa" (2048 bits)."""

    def __init__(self, directory: str, name: str = "server", key_type: str = "ec"):
        import trustme
        self.key_type = trustme.KeyType.RSA if key_type == "rsa" else trustme.KeyType.ECDSA
        self.ca = trustme.CA(key_type=self.key_type)
        self.directory = directory
        self.cert_path = os.path.join(directory, f"{name}-chain.pem")
        self.key_path = os.path.join(directory, f"{name}-key.pem")
        self.ca_path = os.path.join(directory, f"{name}-ca.pem")
        self.ca.cert_pem.write_to_path(self.ca_path)
        self.issue()

    def issue(self, cert_path: str | None = None, key_path: str | None = None):
        """A new leaf certificate (written over the files, or to the given paths)."""
        cert = self.ca.issue_cert("localhost", "127.0.0.1", key_type=self.key_type)
        cert.cert_chain_pems[0].write_to_path(cert_path or self.cert_path)
        for pem in cert.cert_chain_pems[1:]:
            pem.write_to_path(cert_path or self.cert_path, append=True)
        cert.private_key_pem.write_to_path(key_path or self.key_path)
        return cert

    def client_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context()
        self.ca.configure_trust(ctx)
        return ctx

    def tls_section(self) -> dict:
        return {"cert": self.cert_path, "key": self.key_path}
