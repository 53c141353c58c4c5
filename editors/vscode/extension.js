// Starts `nnspec lsp` (configurable as nnspec.command) for .nn files.
const vscode = require("vscode");
const { LanguageClient } = require("vscode-languageclient/node");

let client;

function activate(context) {
  const [command, ...args] = vscode.workspace.getConfiguration("nnspec").get("command");
  client = new LanguageClient(
    "nnspec",
    "nnspec language server",
    { command, args },
    { documentSelector: [{ scheme: "file", language: "nnspec" }] },
  );
  context.subscriptions.push(client);
  client.start();
}

function deactivate() {
  return client ? client.stop() : undefined;
}

module.exports = { activate, deactivate };
