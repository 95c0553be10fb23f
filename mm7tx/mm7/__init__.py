"""MM7 itself, pure: the messages, their status codes and the codec (bytes in,
objects out, and back).  No I/O: nothing here imports ``twisted.internet``."""
