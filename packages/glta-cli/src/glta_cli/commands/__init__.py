"""The ``glta`` commands: thin parsers over the library functions."""
