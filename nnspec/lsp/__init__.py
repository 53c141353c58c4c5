"""The language server (`nnspec lsp`): `queries` answers from the IR, `server` speaks LSP."""


def serve() -> None:
    """Serve on stdin/stdout until the editor closes the connection."""
    from nnspec.lsp.server import make_server

    make_server().start_io()
