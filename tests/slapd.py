"""A throwaway OpenLDAP directory for tests: Debian's slapd with a slapd.conf in a temporary
directory, loaded with slapadd, listening on loopback (ldap:// with StartTLS, and ldaps://),
started and stopped by the test."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time

SUFFIX = "dc=example,dc=org"
ADMIN_DN = f"cn=admin,{SUFFIX}"
ADMIN_PW = "adminpw"
READER_DN = f"cn=reader,{SUFFIX}"
READER_PW = "readerpw"
PEOPLE = f"ou=people,{SUFFIX}"


def available() -> bool:
    return shutil.which("slapd") is not None or os.path.exists("/usr/sbin/slapd")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def person(uid: str, password_field: str, *, mail: str = "", home: str = "", quota: str = "",
           state: str = "active") -> str:
    """An LDIF entry: ``description`` holds the quota rule, ``employeeType`` the state."""
    lines = [f"dn: uid={uid},{PEOPLE}", "objectClass: inetOrgPerson", "objectClass: extensibleObject",
             f"uid: {uid}", f"cn: {uid}", f"sn: {uid}", f"userPassword: {password_field}",
             f"employeeType: {state}"]
    if mail:
        lines.append(f"mail: {mail}")
    if home:
        lines.append(f"homeDirectory: {home}")
    if quota:
        lines.append(f"description: {quota}")
    return "\n".join(lines) + "\n"


class Slapd:
    def __init__(self, base_dir: str, entries: list[str], cert: str = "", key: str = ""):
        self.dir = base_dir
        self.conf = os.path.join(base_dir, "slapd.conf")
        self.port = _free_port()
        self.ldaps_port = _free_port() if cert else 0
        self.proc: subprocess.Popen | None = None
        os.makedirs(os.path.join(base_dir, "db"), exist_ok=True)
        tls = f"TLSCertificateFile {cert}\nTLSCertificateKeyFile {key}\n" if cert else ""
        with open(self.conf, "w") as f:
            f.write(f"""\
include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/inetorgperson.schema
include /etc/ldap/schema/nis.schema
pidfile {base_dir}/slapd.pid
modulepath /usr/lib/ldap
moduleload back_mdb
{tls}
database mdb
maxsize 10485760
suffix "{SUFFIX}"
rootdn "{ADMIN_DN}"
rootpw {ADMIN_PW}
directory {base_dir}/db
access to attrs=userPassword
    by dn.exact="{READER_DN}" read
    by anonymous auth
    by * none
access to * by * read
""")
        ldif = os.path.join(base_dir, "data.ldif")
        with open(ldif, "w") as f:
            f.write(f"dn: {SUFFIX}\nobjectClass: dcObject\nobjectClass: organization\ndc: example\no: Example\n\n")
            f.write(f"dn: {PEOPLE}\nobjectClass: organizationalUnit\nou: people\n\n")
            f.write(f"dn: {READER_DN}\nobjectClass: organizationalRole\nobjectClass: simpleSecurityObject\n"
                    f"cn: reader\nuserPassword: {READER_PW}\n\n")
            f.write("\n".join(entries))
        subprocess.run(["slapadd", "-f", self.conf, "-l", ldif], check=True, capture_output=True)

    @property
    def uri(self) -> str:
        return f"ldap://127.0.0.1:{self.port}"

    @property
    def ldaps_uri(self) -> str:
        return f"ldaps://localhost:{self.ldaps_port}"

    def start(self, timeout: float = 15.0) -> None:
        urls = f"ldap://127.0.0.1:{self.port}/"
        if self.ldaps_port:
            urls += f" ldaps://127.0.0.1:{self.ldaps_port}/"
        self.proc = subprocess.Popen(["slapd", "-f", self.conf, "-h", urls, "-d", "0"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"slapd exited: {self.proc.stderr.read().decode(errors='replace')}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("slapd did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
