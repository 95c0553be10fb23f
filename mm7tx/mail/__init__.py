"""Email, pure: the wire format of the mails we send and the address rules.
No I/O: nothing here imports ``twisted.internet``."""
