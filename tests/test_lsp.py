"""An editor's session with `nnspec lsp` over stdio, through pygls' own client."""

from __future__ import annotations

import asyncio
import sys

import pytest

pytest.importorskip("pygls")
from lsprotocol import types
from pygls.lsp.client import LanguageClient

URI = "file:///tmp/session.nn"
BROKEN = "model M {\n  input x: [8]\n  x -> dense(4) -> bogus\n}\n"
FIXED = "model M {\n  input x: [8]\n  x -> dense(4)->relu\n}\n"


def _doc():
    return types.TextDocumentIdentifier(uri=URI)


async def _session():
    client = LanguageClient("nnspec-test", "1")
    published: asyncio.Queue = asyncio.Queue()

    @client.feature(types.TEXT_DOCUMENT_PUBLISH_DIAGNOSTICS)
    def on_diagnostics(params):
        published.put_nowait(params)

    await client.start_io(sys.executable, "-m", "nnspec", "lsp")
    try:
        await client.initialize_async(types.InitializeParams(
            capabilities=types.ClientCapabilities()))
        client.initialized(types.InitializedParams())
        client.text_document_did_open(types.DidOpenTextDocumentParams(
            text_document=types.TextDocumentItem(uri=URI, language_id="nnspec", version=1,
                                                 text=BROKEN)))
        opened = await asyncio.wait_for(published.get(), 60)
        hover = await client.text_document_hover_async(types.HoverParams(
            text_document=_doc(), position=types.Position(line=2, character=8)))
        completion = await client.text_document_completion_async(types.CompletionParams(
            text_document=_doc(), position=types.Position(line=2, character=13)))
        client.text_document_did_change(types.DidChangeTextDocumentParams(
            text_document=types.VersionedTextDocumentIdentifier(uri=URI, version=2),
            content_changes=[types.TextDocumentContentChangeWholeDocument(text=FIXED)]))
        changed = await asyncio.wait_for(published.get(), 60)
        edits = await client.text_document_formatting_async(types.DocumentFormattingParams(
            text_document=_doc(), options=types.FormattingOptions(tab_size=2,
                                                                 insert_spaces=True)))
        definition = await client.text_document_definition_async(types.DefinitionParams(
            text_document=_doc(), position=types.Position(line=2, character=2)))
        await client.shutdown_async(None)
        client.exit(None)
    finally:
        await client.stop()
    return opened, hover, completion, changed, edits, definition


@pytest.fixture(scope="module")
def session():
    return asyncio.run(_session())


def test_a_mistake_is_published_with_its_code_and_exact_range(session):
    opened = session[0]
    (diagnostic,) = opened.diagnostics
    assert diagnostic.code == "E100" and diagnostic.message.startswith("unknown name `bogus`")
    assert (diagnostic.range.start.line, diagnostic.range.start.character) == (2, 19)
    assert (diagnostic.range.end.line, diagnostic.range.end.character) == (2, 24)


def test_hover_gives_the_shape_from_the_ir(session):
    hover = session[1]
    assert "**[4]**" in hover.contents.value and "parameters: 36" in hover.contents.value


def test_completion_offers_the_open_calls_arguments_and_ops(session):
    labels = [item.label for item in session[2].items]
    assert labels[0] == "units =" and "relu" in labels and "conv2d" in labels


def test_an_edit_clears_the_diagnostics_and_formatting_returns_the_canonical_text(session):
    changed, edits = session[3], session[4]
    assert not changed.diagnostics
    (edit,) = edits
    assert edit.new_text == FIXED.replace("->relu", " -> relu")


def test_go_to_definition_of_an_input(session):
    location = session[5]
    assert location.range.start.line == 1 and location.range.start.character == 8
