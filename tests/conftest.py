"""What the whole test session starts from."""

from __future__ import annotations

import signal

# A shell starts a background job with SIGINT ignored, and every process a test starts
# would inherit that: the Ctrl-C tests would send SIGINT to programs that ignore it, and
# wait. They test how a program handles Ctrl-C as Python sets it up, so the session
# starts from Python's own handler.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
