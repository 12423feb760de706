"""A mail backend: IMAP, POP3 and LMTP over one mail-storage API, with mail in Ceph or on local disk."""

__version__ = "0.1.0"
