"""One module per CLI subcommand: ``add_arguments(parser)`` and ``run(args) -> int``.

Modules here must import heavy dependencies inside ``run`` only. ``terminal``
is not a subcommand: it makes log-derived text safe to print.
"""
