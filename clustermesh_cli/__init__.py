"""The ``clustermesh`` command-line tool."""
