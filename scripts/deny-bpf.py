#!/usr/bin/python3
"""Runs a program with the bpf() syscall denied (EPERM), as a locked-down container runtime's
seccomp profile does. Usage: deny-bpf.py PROGRAM [ARGS...]. Used by the agent's fallback tests."""
import errno
import os
import sys

import seccomp

f = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
f.add_rule(seccomp.ERRNO(errno.EPERM), "bpf")
f.load()
os.execv(sys.argv[1], sys.argv[1:])
