"""Preloaded by a fresh fork server to leave it only a few free fds."""

from __future__ import annotations

import os
import resource

_SOFT, _HARD = resource.getrlimit(resource.RLIMIT_NOFILE)
# What the server opens once this import is done (its epoll, the starter's pidfd, a
# client or two) fits; a handful of children later, a fork finds no fd.
resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 12, _HARD))
