"""The ``mpq`` sub-commands, one module per group; :mod:`service.cli` assembles the parser."""
