"""``python -m clustermesh_apiserver``: the ``clustermesh-apiserver`` command."""

from clustermesh_apiserver.cli import main

main(prog_name="clustermesh-apiserver")
