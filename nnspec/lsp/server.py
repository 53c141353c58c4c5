"""The LSP wiring (pygls): documents in, diagnostics, hovers, definitions, completions and
formatting out. Positions: the protocol counts UTF-16 code units from 0, the front end
characters from 1; `_to_lsp` and `_from_lsp` convert with the line's text.
"""

from __future__ import annotations

from urllib.parse import unquote, urlparse

from lsprotocol import types
from pygls.lsp.server import LanguageServer

from nnspec import __version__
from nnspec.diagnostics import Diagnostic, Span, SpecError
from nnspec.frontend import Analysis, ModelCache, analyze
from nnspec.lsp import queries

_SEVERITY = {"error": types.DiagnosticSeverity.Error,
             "warning": types.DiagnosticSeverity.Warning,
             "note": types.DiagnosticSeverity.Information}
_KINDS = {"op": types.CompletionItemKind.Function, "block": types.CompletionItemKind.Class,
          "fn": types.CompletionItemKind.Function, "value": types.CompletionItemKind.Variable,
          "argument": types.CompletionItemKind.Property,
          "setting": types.CompletionItemKind.EnumMember}


class SpecServer(LanguageServer):
    """Keeps the latest analysis of each open document (one `analyze` per edit, reusing
    the models whose text and dependencies the edit did not touch)."""

    def __init__(self):
        super().__init__("nnspec", __version__)
        self.analyses: dict[str, Analysis] = {}
        self.caches: dict[str, ModelCache] = {}

    def refresh(self, uri: str) -> None:
        document = self.workspace.get_text_document(uri)
        analysis = analyze(document.source, _path(uri), every_model=True,
                           reuse=self.caches.setdefault(uri, ModelCache()))
        self.analyses[uri] = analysis
        self.text_document_publish_diagnostics(types.PublishDiagnosticsParams(
            uri=uri, version=document.version,
            diagnostics=[_diagnostic(d, uri) for d in analysis.diagnostics]))

    def analysis(self, uri: str) -> Analysis:
        if uri not in self.analyses:
            self.refresh(uri)
        return self.analyses[uri]


def make_server() -> SpecServer:
    server = SpecServer()

    @server.feature(types.TEXT_DOCUMENT_DID_OPEN)
    def did_open(ls: SpecServer, params: types.DidOpenTextDocumentParams):
        ls.refresh(params.text_document.uri)

    @server.feature(types.TEXT_DOCUMENT_DID_CHANGE)
    def did_change(ls: SpecServer, params: types.DidChangeTextDocumentParams):
        ls.refresh(params.text_document.uri)

    @server.feature(types.TEXT_DOCUMENT_DID_CLOSE)
    def did_close(ls: SpecServer, params: types.DidCloseTextDocumentParams):
        ls.analyses.pop(params.text_document.uri, None)
        ls.caches.pop(params.text_document.uri, None)
        ls.text_document_publish_diagnostics(types.PublishDiagnosticsParams(
            uri=params.text_document.uri, diagnostics=[]))

    @server.feature(types.TEXT_DOCUMENT_HOVER)
    def hover(ls: SpecServer, params: types.HoverParams):
        text = ls.workspace.get_text_document(params.text_document.uri).source
        line, col = _from_lsp(text, params.position)
        found = queries.hover(ls.analysis(params.text_document.uri), line, col)
        if found is None:
            return None
        return types.Hover(contents=types.MarkupContent(kind=types.MarkupKind.Markdown,
                                                        value=found))

    @server.feature(types.TEXT_DOCUMENT_DEFINITION)
    def definition(ls: SpecServer, params: types.DefinitionParams):
        text = ls.workspace.get_text_document(params.text_document.uri).source
        line, col = _from_lsp(text, params.position)
        span = queries.definition(ls.analysis(params.text_document.uri), line, col)
        if span is None:
            return None
        return types.Location(uri=params.text_document.uri, range=_range(span))

    @server.feature(types.TEXT_DOCUMENT_COMPLETION,
                    types.CompletionOptions(trigger_characters=["(", ",", " "]))
    def completion(ls: SpecServer, params: types.CompletionParams):
        text = ls.workspace.get_text_document(params.text_document.uri).source
        line, col = _from_lsp(text, params.position)
        items = queries.completions(ls.analysis(params.text_document.uri), text, line, col)
        return types.CompletionList(is_incomplete=False, items=[
            types.CompletionItem(label=c.label, kind=_KINDS[c.kind], detail=c.detail or None,
                                 insert_text=c.insert) for c in items])

    @server.feature(types.TEXT_DOCUMENT_FORMATTING)
    def formatting(ls: SpecServer, params: types.DocumentFormattingParams):
        from nnspec.formatter import format_text

        text = ls.workspace.get_text_document(params.text_document.uri).source
        try:
            formatted = format_text(text, _path(params.text_document.uri))
        except SpecError:
            return None  # the diagnostics already say why it does not parse
        if formatted == text:
            return []
        lines = text.split("\n")
        end = types.Position(line=len(lines) - 1, character=len(lines[-1].encode("utf-16-le"))
                             // 2)
        return [types.TextEdit(range=types.Range(start=types.Position(line=0, character=0),
                                                 end=end), new_text=formatted)]

    return server


def _path(uri: str) -> str:
    parsed = urlparse(uri)
    return unquote(parsed.path) if parsed.scheme == "file" else uri


def _diagnostic(d: Diagnostic, uri: str) -> types.Diagnostic:
    message = d.message + (f"\nhint: {d.hint}" if d.hint else "")
    related = [types.DiagnosticRelatedInformation(
        location=types.Location(uri=uri, range=_range(n.span)), message=n.message)
        for n in d.notes if n.span is not None and n.span.path == d.span.path] \
        if d.span is not None else []
    return types.Diagnostic(range=_range(d.span), message=message, severity=_SEVERITY.get(
        d.severity, types.DiagnosticSeverity.Error), code=d.code, source="nnspec",
        related_information=related or None)


def _range(span: Span | None) -> types.Range:
    if span is None:  # a whole-file problem (E000): the first character
        start = types.Position(line=0, character=0)
        return types.Range(start=start, end=start)
    return types.Range(start=_to_lsp(span, span.line, span.col),
                       end=_to_lsp(span, span.end_line, span.end_col))


def _to_lsp(span: Span, line: int, col: int) -> types.Position:
    text = span.source.line(line)[:col - 1]
    return types.Position(line=line - 1, character=len(text.encode("utf-16-le")) // 2)


def _from_lsp(text: str, position: types.Position) -> tuple[int, int]:
    lines = text.split("\n")
    line = lines[position.line] if position.line < len(lines) else ""
    units = line.encode("utf-16-le")[:position.character * 2]
    return position.line + 1, len(units.decode("utf-16-le", errors="ignore")) + 1
