"""The application layer: what each ``calibseg`` command does once its options are checked.

``CalibSegLib.workflows.<command>`` holds ``run(args) -> int`` of the command whose
interface (options and checks, no torch) is ``CalibSegLib.commands.<command>``; the
command line loads it by name only after the checks passed. Jobs shared by commands
(the comparison report behind ``demo`` and ``report``) live here too.
"""
