"""One module per CLI subcommand: ``add_arguments(parser)`` and ``run(args) -> int``.

Modules here must import heavy dependencies inside ``run`` only.
"""
