# NixOS module for hyperhive agent "{name}".
# The manager edits this file in the agent's proposed repo and asks for the
# commit to be applied; nothing changes until the operator approves it.
# The hyperhive.* options are declared by hyperhive's nix/templates/harness-base.nix.
{ pkgs, ... }:
{
  # The model at the first start if hive.json names none (hive.json's wins).
  hyperhive.model = "haiku";

  # Packages on the agent's PATH.
  environment.systemPackages = with pkgs; [ ];

  # Extra MCP servers for claude. allowedTools patterns are granted as
  # mcp__<key>__<pattern>; leave the list empty to grant the whole server.
  # hyperhive.extraMcpServers.notes = {
  #   command = "${pkgs.nodejs}/bin/npx";
  #   args = [ "-y" "some-notes-mcp-server" ];
  #   env = { NOTES_DIR = "/state/notes"; };
  #   allowedTools = [ "read_*" "search" ];
  # };

  # Which tool calls claude makes freely, which wait for the operator's approval
  # and which are refused (deny beats ask beats allow). Rules: Tool, Tool(glob),
  # Bash(prefix:*), Bash(command), WebFetch(domain:host).
  # hyperhive.permissions = {
  #   allow = [ "Read" "Bash(git status:*)" ];
  #   ask = [ "Bash(git push:*)" ];
  #   deny = [ "WebFetch(domain:example.com)" ];
  # };
}
