"""The modes of the ``gproc`` command, one module each family: its switches, its usage, its run.

Modes import ``gproc.switches`` and the Python API below them; never ``gproc.cli``, which imports them.
"""
